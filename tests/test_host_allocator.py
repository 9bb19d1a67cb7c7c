"""The host allocator settings (image_learner/host_allocator.py): applied where glibc is, never over
a user's own, and they do what they are for (freed memory stays in the process instead of being faulted in
again), measured in a fresh process on 64 MiB."""

import os
import platform
import subprocess
import sys

import pytest

from image_learner import host_allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# In a fresh process: 64 blocks of 1 MiB from malloc, written, freed; then how much of them is still
# resident (KiB). glibc's defaults hand them back to the kernel (each is mmapped: 1 MiB > the 128 KiB
# initial threshold); the tuned heap keeps them for the next step.
_PROBE = """
import ctypes, sys
sys.path.insert(0, {root!r})
from image_learner import host_allocator
applied = host_allocator.tune() if sys.argv[1] == "tuned" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def rss_kib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 1024
before = rss_kib()
size, count = int(sys.argv[2]) << 20, int(sys.argv[3])
blocks = [libc.malloc(size) for _ in range(count)]
for block in blocks:
    ctypes.memset(block, 1, size)
for block in blocks:
    libc.free(block)
released = host_allocator.release() if sys.argv[4:] == ["release"] else False
print(applied, rss_kib() - before, released)
"""


def _env_without_malloc_settings() -> dict:
    """This environment less any malloc setting of the user's (which would stop the tuning)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}


def _probe(mode: str, env: dict, mib: int = 1, count: int = 64, release: bool = False) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(root=ROOT), mode, str(mib), str(count),
                          *(["release"] if release else [])],
                         env=env, check=True, capture_output=True, text=True, timeout=60).stdout.split()
    assert (out[2] == "True") == (release and out[0] == "True"), out  # release acts where tune applied
    return out[0] == "True", int(out[1])


def test_a_users_own_malloc_settings_win():
    assert host_allocator.user_has_chosen({"MALLOC_ARENA_MAX": "2"})
    assert host_allocator.user_has_chosen({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert not host_allocator.user_has_chosen({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2", "PATH": "/bin"})
    assert not host_allocator.tune({"MALLOC_TRIM_THRESHOLD_": "0"})


def test_every_setting_fits_mallopts_int():
    # mallopt takes a C int, and ctypes wraps a larger value round without a word (2**32 becomes 0), typed or not.
    assert all(-2**31 <= value < 2**31 for _, value in host_allocator.SETTINGS)


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's; other C libraries are left alone")
def test_the_tuned_heap_keeps_freed_memory_that_glibcs_defaults_give_back():
    env = _env_without_malloc_settings()
    applied, kept_tuned = _probe("tuned", env)
    _, kept_default = _probe("default", env)
    assert applied
    assert kept_tuned > 48 * 1024, kept_tuned  # most of the 64 MiB stays resident, ready for reuse
    assert kept_default < 16 * 1024, kept_default  # given back to the kernel on free
    # and a user's setting leaves glibc as it was
    applied_over_user, kept_user = _probe("tuned", dict(env, MALLOC_ARENA_MAX="4"))
    assert not applied_over_user and kept_user < 16 * 1024


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's; other C libraries are left alone")
def test_blocks_above_glibcs_largest_mmap_threshold_stay_in_the_heap_too():
    # lite0's largest activations at 224 px, batch 32, are 51-154 MB: above 32 MiB, glibc's largest mmap
    # threshold, so they were mmapped and faulted in again every step until mmap was turned off (M_MMAP_MAX 0).
    env = _env_without_malloc_settings()
    applied, kept_tuned = _probe("tuned", env, mib=96, count=1)
    _, kept_default = _probe("default", env, mib=96, count=1)
    assert applied
    assert kept_tuned > 80 * 1024, kept_tuned
    assert kept_default < 16 * 1024, kept_default


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's; other C libraries are left alone")
def test_release_hands_the_kept_memory_back_where_a_stage_ends():
    env = _env_without_malloc_settings()
    _, kept = _probe("tuned", env, mib=96, count=1, release=True)
    assert kept < 16 * 1024, kept
    _, kept_untuned = _probe("default", env, mib=96, count=1, release=True)  # nothing to do, nothing done
    assert kept_untuned < 16 * 1024, kept_untuned


def test_the_stage_timer_calls_after_stage_once_a_stage_has_finished():
    from image_learner.run_files import StageTimer

    calls = []
    timer = StageTimer(after_stage=lambda: calls.append(sorted(timer.seconds)))
    with timer.stage("a"):
        assert calls == []
    with timer.stage("b"):
        pass
    assert calls == [["a"], ["a", "b"]]
    with pytest.raises(RuntimeError), timer.stage("c"):
        raise RuntimeError("failed")
    assert len(calls) == 2  # a failed stage ends the run: nothing to hand back for


def _worker_is_tuned() -> bool:
    return host_allocator._tuned


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's; other C libraries are left alone")
def test_the_image_checks_workers_tune_their_allocator(monkeypatch):
    # spawned workers start a fresh interpreter (no mallopt of the parent's): without their own tuning each
    # image's ~150 KB buffers were faulted in again (BENCHMARKS.md, "The image check's workers")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from image_learner.data import image_check

    for name in set(os.environ) - set(_env_without_malloc_settings()):
        monkeypatch.delenv(name)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=image_check._start_worker) as pool:
        assert pool.submit(_worker_is_tuned).result(timeout=120)
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        assert not pool.submit(_worker_is_tuned).result(timeout=120)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # a user's own setting reaches the workers and wins there too
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=image_check._start_worker) as pool:
        assert not pool.submit(_worker_is_tuned).result(timeout=120)
