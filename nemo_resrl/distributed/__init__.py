"""Cross-rank parts: ResRL inside the actor's old-log-prob pass, and the collectives it needs."""
