import torch

from nemo_resrl.diagnostics.live_bytes import LiveBytes


def test_counts_new_storages_until_their_last_view_dies():
    outside = torch.zeros(1000)
    with LiveBytes() as lb:
        a = torch.empty(1000, 1000)  # 4 MB
        outside.mul_(2)  # in place on a tensor from outside: nothing new
        view = a[:10]  # a view: no new bytes
        b = a + 1  # 4 MB: 8 MB live
        del a  # the view keeps its storage alive
        c = torch.empty(10)  # 40 B: the peak, 8 MB + 40 B
        del view  # now a's storage goes
        d = torch.empty(500, 1000)  # 2 MB
    assert lb.peak == 8_000_040
    assert lb.live == 4_000_000 + 40 + 2_000_000
    del b, c, d
    assert lb.live == 0


def test_pause_leaves_out_what_is_made_inside_it():
    with LiveBytes() as lb:
        with lb.pause():
            theirs = torch.empty(100)
        mine = torch.empty(10)
    assert lb.peak == 40 and lb.live == 40
    del theirs, mine


def test_a_measurement_can_fail():
    """A leak (a tensor kept past the block) shows as live bytes; a larger temporary as a larger peak."""
    kept = []
    with LiveBytes() as lb:
        kept.append(torch.empty(25))
        tmp = torch.empty(50)
        del tmp
    assert lb.live == 100 and lb.peak == 300


def test_a_storage_released_while_still_viewed_stops_counting_and_its_address_counts_again():
    """``untyped_storage().resize_(0)`` frees memory a collective's worker may still reference: the bytes
    stop counting at the next operator, and a new storage that gets the same address counts in full."""
    with LiveBytes() as lb:
        a = torch.ones(1000)  # 4000 bytes
        a.untyped_storage().resize_(0)
        b = torch.ones(500)  # 2000 bytes: the next operator sees a released
        assert lb.live == 2000
        c = torch.ones(1000)
        assert lb.live == 6000 and lb.peak == 6000
        del a, b, c
    assert lb.live == 0


def test_a_tensor_freed_in_another_thread_is_counted_out():
    import threading

    with LiveBytes() as lb:
        box = [torch.ones(256)]
        assert lb.live == 1024
        worker = threading.Thread(target=box.clear)  # the last reference dies in that thread
        worker.start()
        worker.join()
        assert lb.live == 0
