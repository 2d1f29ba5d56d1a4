"""bench.medium's pieces (fast; collected by `pytest bench/`): the C floor's capture and the summary over processes."""

from __future__ import annotations

import ctypes
import shutil

from bench import cfloor, medium


def test_the_c_floor_reads_the_whole_output_of_both_pipes() -> None:
    for size in (0, 1, 65536, 65537, (1 << 20) + 3):  # around the pipe's enlargement at 64 KiB
        assert medium._floor(size)() == size
    # An output longer than the buffer is a failure (-1), never a short count.
    func = ctypes.CDLL(str(cfloor.build().libfloor)).floor_read_poll
    func.restype = ctypes.c_longlong
    func.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t)
    head = (shutil.which("head") or "/usr/bin/head").encode()
    argv = (ctypes.c_char_p * 5)(head, b"-c", b"100000", b"/dev/zero", None)
    buf = ctypes.create_string_buffer(100000)
    assert func(ctypes.cast(argv, ctypes.c_void_p), buf, 100000) == 100000
    assert func(ctypes.cast(argv, ctypes.c_void_p), buf, 99999) == -1


def test_summarize_takes_medians_over_processes() -> None:
    runs = [
        {"pyproc": [100, 100, 100], "subprocess": [120, 130, 110], "C floor": [90, 90, 90]},
        {"pyproc": [200, 200, 200], "subprocess": [180, 180, 180], "C floor": [210, 210, 210]},
        {"pyproc": [100, 100, 100], "subprocess": [150, 150, 150], "C floor": [100, 100, 100]},
    ]
    s = medium.summarize(runs)
    assert s["pyproc ns"] == 100 and s["subprocess ns"] == 150 and s["C floor ns"] == 100
    assert s["subprocess"] == 1.2 and (s["subprocess min"], s["subprocess max"]) == (0.9, 1.5)  # per-process ratios
    assert s["C floor"] == 1.0 and (s["C floor min"], s["C floor max"]) == (0.9, 1.05)
    assert s["n"] == 9
