"""Test-wide settings: one CPU thread per process, and the device the tests run on.

The models under test are tiny, so intra-op threads buy nothing, and an oversubscribed OpenMP
pool (tests beside a training run on 2 cores) slows backward passes by ~100x. CLI tests start
subprocesses, which inherit OMP_NUM_THREADS.

BEAMTUNE_TEST_DEVICE=cuda runs the tests with their tensors and models on that device
(tests/device_mode.py; unset: plain CPU tests); benchmarks/gpu_check.py runs the search and CRF
tests that way.
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TEST_DEVICE = os.environ.get("BEAMTUNE_TEST_DEVICE")


@pytest.fixture(autouse=True)
def _test_device():
    """Every test runs under the test device's mode when one is set."""
    if not TEST_DEVICE:
        yield
        return
    from device_mode import OnTestDevice

    with OnTestDevice(TEST_DEVICE):
        yield


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray (2 CPUs) for one test module's sweeps; the sweeps join it instead of starting their own."""
    import ray

    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2,
             log_to_driver=False)
    yield
    ray.shutdown()
