"""One image read from many Python threads at once: right results, and the GIL released
while the library works."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import vmdk
from conftest import MIB, make_image, qemu_raw, run


def test_parallel_reads_are_correct(workdir):
    path = make_image(workdir, "streamOptimized")
    expected = qemu_raw(path)
    with vmdk.open(path) as img:
        chunks = [(off, 192 * 1024 + 11) for off in range(0, img.size - 300000, 250007)]

        def read(c):
            return img.read(*c)

        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(3):
                for (off, n), data in zip(chunks, pool.map(read, chunks)):
                    assert data == expected[off : off + n]


def test_gil_is_released_during_reads(workdir):
    # 64 MiB of compressed data: one read() decompresses all of it, which takes long
    # enough that, were the GIL held, the main thread could not run meanwhile.
    raw = workdir / "big.raw"
    run("qemu-img", "create", "-q", "-f", "raw", raw, "64M")
    run("qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 64M", raw)
    run("qemu-img", "convert", "-q", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, "big.vmdk")
    with vmdk.open("big.vmdk") as img:
        started = threading.Event()
        spent = []

        def reader():
            started.set()
            t = time.perf_counter()
            for _ in range(3):
                assert img.read(0, img.size).count(b"\x3c") == img.size
            spent.append(time.perf_counter() - t)

        th = threading.Thread(target=reader)
        th.start()
        started.wait()
        ticks = 0
        while th.is_alive():
            ticks += 1
            time.sleep(0.001)
        th.join()
    assert spent, "the reading thread failed"
    # With the GIL held for the whole read, the loop above would tick about once per
    # read() call; released, it ticks about once per millisecond.
    assert ticks > max(20, spent[0] * 1000 * 0.1), (ticks, spent)
