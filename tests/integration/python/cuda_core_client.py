"""cuda.core (over cuda-bindings) as a user runs it on a GPU, printed as JSON lines.

Usage: python cuda_core_client.py PTX_FILE ALLOC_BYTES TOO_MUCH_BYTES

Selects device 0 (its primary context), creates a stream, allocates ALLOC_BYTES from the
device's memory pool (stream-ordered), loads the PTX file as a library (cuLibraryLoadFromFile),
gets its `spin` kernel and reads its attributes (cuKernelGetAttribute), launches it for 2 ms,
synchronizes, then tries to allocate TOO_MUCH_BYTES (expected to fail with
CUDA_ERROR_OUT_OF_MEMORY inside a gpumux tenant whose quota is smaller), frees and exits. The
primary context is released from cuda.core's C++ thread_local destructor at exit.
"""
import ctypes
import json
import sys

from cuda.core import Device, LaunchConfig, ObjectCode, launch


def say(**kv):
    print(json.dumps(kv), flush=True)


def main():
    ptx, size, too_much = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dev = Device(0)
    dev.set_current()
    cc = dev.compute_capability
    say(op="device", name=dev.name, cc=[cc.major, cc.minor], uuid=str(dev.uuid))
    stream = dev.create_stream()
    buf = dev.allocate(size, stream=stream)
    say(op="allocate", size=buf.size)
    kernel = ObjectCode.from_ptx(ptx).get_kernel("spin")
    a = kernel.attributes
    say(op="attributes", max_threads_per_block=a.max_threads_per_block,
        max_dynamic_shared_size_bytes=a.max_dynamic_shared_size_bytes,
        ptx_version=a.ptx_version, binary_version=a.binary_version, num_regs=a.num_regs)
    launch(stream, LaunchConfig(grid=1, block=1), kernel, ctypes.c_uint64(2_000_000))
    stream.sync()
    say(op="launch")
    try:
        big = dev.allocate(too_much, stream=stream)
        big.close(stream)
        say(op="too-much", error=None)
    except Exception as e:  # cuda.core raises CUDAError with the driver's error name
        say(op="too-much", error=str(e).split(":")[0])
    buf.close(stream)
    stream.sync()
    stream.close()
    say(op="done")


if __name__ == "__main__":
    main()
