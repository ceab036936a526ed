"""What a monitoring user asks NVML through pynvml (nvidia-ml-py), printed as one JSON object.

Usage: python nvml_monitor.py [--only-pids PID,PID,...] [EXPORTS_FILE]
EXPORTS_FILE: NVML function names, one a line (the real library's exports); each must resolve
(pynvml's lookup raises NVMLError_FunctionNotFound for a missing one).
--only-pids: the processes this caller may see (a tenant's own): every per-process call
(running compute, graphics and MPS processes, the process detail list in each mode, per-process
utilization both ways, accounting pids) must list no other pid.

Every query's answer, or the name of the NVMLError it raised, is recorded per device (the pids
each per-process call lists under "pids"); a missing function, a pid listed that --only-pids
does not allow ("foreign_pids"), a crash or an unexpected exception fails the run (exit 1).
"""
import json
import os
import sys

import pynvml as nv


def ask(out, key, fn, *args):
    try:
        out[key] = fn(*args)
    except nv.NVMLError as e:
        out[key] = {"error": type(e).__name__, "code": e.value}


def pids_of(out, key, fn, *args):
    """The pids a per-process call lists (sorted), or the NVMLError it raised."""
    try:
        out[key] = sorted({int(getattr(p, "pid", p)) for p in fn(*args)})
    except nv.NVMLError as e:
        out[key] = {"error": type(e).__name__, "code": e.value}


def per_process_pids(h):
    pids = {}
    pids_of(pids, "compute", nv.nvmlDeviceGetComputeRunningProcesses, h)
    pids_of(pids, "compute_v2", nv.nvmlDeviceGetComputeRunningProcesses_v2, h)
    pids_of(pids, "graphics", nv.nvmlDeviceGetGraphicsRunningProcesses, h)
    pids_of(pids, "graphics_v2", nv.nvmlDeviceGetGraphicsRunningProcesses_v2, h)
    pids_of(pids, "mps", nv.nvmlDeviceGetMPSComputeRunningProcesses, h)
    for mode in (0, 1, 2):
        pids_of(pids, "detail_list_mode_%d" % mode, nv.nvmlDeviceGetRunningProcessDetailList, h,
                nv.nvmlProcessDetailList_v1, mode)
    pids_of(pids, "utilization", nv.nvmlDeviceGetProcessUtilization, h, 0)
    pids_of(pids, "utilization_info", nv.nvmlDeviceGetProcessesUtilizationInfo, h, 0)
    pids_of(pids, "accounting", nv.nvmlDeviceGetAccountingPids, h)
    return pids


def main():
    args = sys.argv[1:]
    only = None
    if args[:1] == ["--only-pids"]:
        only = {int(p) for p in args[1].split(",") if p}
        args = args[2:]
    nv.nvmlInit()
    report = {"driver": nv.nvmlSystemGetDriverVersion(), "devices": []}
    ask(report, "cuda_driver", nv.nvmlSystemGetCudaDriverVersion)
    ask(report, "nvml_version", nv.nvmlSystemGetNVMLVersion)
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        d = {"index": i}
        ask(d, "name", nv.nvmlDeviceGetName, h)
        ask(d, "uuid", nv.nvmlDeviceGetUUID, h)
        pci = nv.nvmlDeviceGetPciInfo(h)
        d["pci"] = {"busId": pci.busId, "busIdLegacy": pci.busIdLegacy, "pciDeviceId": pci.pciDeviceId}
        same = nv.nvmlDeviceGetHandleByPciBusId(pci.busId)
        d["handle_by_pci_bus_id_matches"] = nv.nvmlDeviceGetIndex(same) == i
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        d["memory"] = {"total": mem.total, "free": mem.free, "used": mem.used}
        bar1 = nv.nvmlDeviceGetBAR1MemoryInfo(h)
        d["bar1"] = {"total": bar1.bar1Total, "free": bar1.bar1Free, "used": bar1.bar1Used}
        ask(d, "temperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
        ask(d, "temperature_slowdown", nv.nvmlDeviceGetTemperatureThreshold, h,
            nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
        ask(d, "power_mw", nv.nvmlDeviceGetPowerUsage, h)
        ask(d, "power_limit_mw", nv.nvmlDeviceGetEnforcedPowerLimit, h)
        ask(d, "power_constraints_mw", nv.nvmlDeviceGetPowerManagementLimitConstraints, h)
        ask(d, "energy_mj", nv.nvmlDeviceGetTotalEnergyConsumption, h)
        ask(d, "fan", nv.nvmlDeviceGetFanSpeed, h)
        ask(d, "compute_mode", nv.nvmlDeviceGetComputeMode, h)
        ask(d, "mig_mode", nv.nvmlDeviceGetMigMode, h)
        ask(d, "persistence", nv.nvmlDeviceGetPersistenceMode, h)
        ask(d, "pstate", nv.nvmlDeviceGetPerformanceState, h)
        ask(d, "ecc", nv.nvmlDeviceGetEccMode, h)
        ask(d, "cc", nv.nvmlDeviceGetCudaComputeCapability, h)
        ask(d, "arch", nv.nvmlDeviceGetArchitecture, h)
        ask(d, "brand", nv.nvmlDeviceGetBrand, h)
        ask(d, "serial", nv.nvmlDeviceGetSerial, h)
        ask(d, "vbios", nv.nvmlDeviceGetVbiosVersion, h)
        ask(d, "pcie_gen", nv.nvmlDeviceGetCurrPcieLinkGeneration, h)
        ask(d, "pcie_width", nv.nvmlDeviceGetCurrPcieLinkWidth, h)
        ask(d, "clock_sm", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)
        ask(d, "clock_mem", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM)
        ask(d, "max_clock_sm", nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM)
        ask(d, "clock_event_reasons", nv.nvmlDeviceGetCurrentClocksEventReasons, h)
        util = nv.nvmlDeviceGetUtilizationRates(h)
        d["utilization"] = {"gpu": util.gpu, "memory": util.memory}
        ask(d, "encoder", nv.nvmlDeviceGetEncoderUtilization, h)
        procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
        d["processes"] = [{"pid": p.pid, "used": p.usedGpuMemory} for p in procs]
        d["process_names"] = {}
        for p in procs:
            ask(d["process_names"], str(p.pid), nv.nvmlSystemGetProcessName, p.pid)
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(h, 0)
            d["process_utilization"] = [{"pid": s.pid, "sm": s.smUtil} for s in samples]
        except nv.NVMLError as e:
            d["process_utilization"] = {"error": type(e).__name__, "code": e.value}
        d["pids"] = per_process_pids(h)
        report["devices"].append(d)
    foreign = {}
    if only is not None:
        for d in report["devices"]:
            for call, listed in d["pids"].items():
                extra = [p for p in listed if p not in only] if isinstance(listed, list) else []
                if extra:
                    foreign["%d:%s" % (d["index"], call)] = extra
    report["foreign_pids"] = foreign
    missing = []
    if args:
        with open(args[0]) as f:
            for name in (l.strip() for l in f):
                if not name:
                    continue
                try:
                    nv._nvmlGetFunctionPointer(name)
                except nv.NVMLError:
                    missing.append(name)
    report["missing_functions"] = missing
    nv.nvmlShutdown()
    print(json.dumps(report, default=str))
    return 1 if missing or foreign else 0


if __name__ == "__main__":
    sys.exit(main())
