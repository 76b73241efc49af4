from __future__ import annotations

import pytest

from agent.sensors.cpu import CpuReader
from agent.sensors.memory import read_memory


def test_meminfo_psi_and_cgroup_v2_are_read_from_the_given_roots(fake):
    fake.desktop_basics()
    fake.psi(some=12.5, full=3.25)
    mem, _notes = read_memory(fake.sys, fake.proc)
    assert mem.total_bytes == 8_000_000 * 1024
    assert mem.available_bytes == 5_000_000 * 1024
    assert mem.swap_used_bytes == 500_000 * 1024
    assert mem.psi_some_avg10 == pytest.approx(12.5) and mem.psi_full_avg10 == pytest.approx(3.25)
    assert mem.cgroup_max_bytes == 2 * 1024**3 and mem.cgroup_current_bytes == 300 * 1024**2


def test_cgroup_without_limit_is_null_with_reason(fake):
    fake.desktop_basics()
    fake.write("sys/fs/cgroup/system.slice/agentd.service/memory.max", "max")
    mem, notes = read_memory(fake.sys, fake.proc)
    assert mem.cgroup_max_bytes is None and mem.cgroup_current_bytes == 300 * 1024**2
    assert "no limit" in (notes.get("memory.cgroup_max_bytes") or "")


def test_cgroup_v2_on_a_hybrid_host_is_found_under_unified(fake):
    fake.desktop_basics()
    fake.write("proc/self/cgroup", "4:memory:/x\n0::/user.slice/app")
    fake.write("sys/fs/cgroup/unified/user.slice/app/memory.max", 1_000_000)
    fake.write("sys/fs/cgroup/unified/user.slice/app/memory.current", 5_000)
    mem, _ = read_memory(fake.sys, fake.proc)
    assert mem.cgroup_max_bytes == 1_000_000 and mem.cgroup_current_bytes == 5_000


def test_cgroup_v1_memory_controller_is_a_fallback(fake):
    fake.desktop_basics()
    fake.write("proc/self/cgroup", "4:memory:/docker/abc\n0::/")
    fake.write("sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", 9223372036854771712)
    fake.write("sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes", 1234)
    mem, notes = read_memory(fake.sys, fake.proc)
    assert mem.cgroup_max_bytes is None and mem.cgroup_current_bytes == 1234
    assert "no limit" in (notes.get("memory.cgroup_max_bytes") or "")


@pytest.mark.parametrize("text", ["some avg10=abc avg60=0 total=0", "", "garbage", "some avg10=-3 total=1"])
def test_malformed_psi_is_null_with_reason(fake, text):
    fake.desktop_basics()
    fake.write("proc/pressure/memory", text)
    mem, notes = read_memory(fake.sys, fake.proc)
    assert mem.psi_some_avg10 is None and notes.get("memory.psi_some_avg10")
    assert mem.total_bytes is not None


def test_missing_psi_and_meminfo_give_nulls_not_errors(fake):
    mem, notes = read_memory(fake.sys, fake.proc)
    assert mem.total_bytes is None and mem.available_bytes is None and mem.psi_some_avg10 is None
    assert notes.get("memory.total_bytes") and notes.get("memory.psi_some_avg10")


def test_meminfo_without_memavailable_says_so(fake):
    fake.write("proc/meminfo", "MemTotal: 1000 kB\nMemAvailable: abc kB")
    mem, notes = read_memory(fake.sys, fake.proc)
    assert mem.total_bytes == 1_024_000 and mem.available_bytes is None
    assert "MemAvailable" in (notes.get("memory.available_bytes") or "")


def test_real_proc_uses_psutil_and_matches_meminfo():
    mem, _ = read_memory("/sys", "/proc")
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    assert mem.total_bytes == total_kb * 1024
    assert mem.available_bytes is not None and 0 < mem.available_bytes <= mem.total_bytes


# ------------------------------------------------------------------------------------------- CPU

def test_cpu_load_online_frequency_and_utilisation_over_two_reads(fake):
    fake.desktop_basics()
    r = CpuReader(fake.sys, fake.proc)
    first, notes = r.read()
    assert first.load_1m == pytest.approx(0.42) and first.online == 4
    assert first.freq_mhz == pytest.approx(2150.0)
    assert first.util_percent is None and notes.get("cpu.util_percent")
    fake.stat(user=100 + 30, system=50 + 10, idle=1000 + 60)     # 40 busy of 100 ticks
    second, _ = r.read()
    assert second.util_percent == pytest.approx(40.0)
    assert second.busy_s_total is not None and second.busy_s_total > (first.busy_s_total or 0)


def test_big_little_cores_are_classed_by_cpu_capacity(fake):
    fake.desktop_basics()
    for c, cap in enumerate([446, 446, 871, 1024]):
        fake.write(f"sys/devices/system/cpu/cpu{c}/cpu_capacity", cap)
    cpu, _ = CpuReader(fake.sys, fake.proc).read()
    assert cpu.core_classes == (("performance", (3,)), ("balanced", (2,)), ("efficiency", (0, 1)))


def test_intel_hybrid_cores_come_from_cpu_core_and_cpu_atom(fake):
    fake.desktop_basics()
    fake.write("sys/devices/cpu_core/cpus", "0-3")
    fake.write("sys/devices/cpu_atom/cpus", "4-11")
    cpu, _ = CpuReader(fake.sys, fake.proc).read()
    assert cpu.core_classes == (("performance", (0, 1, 2, 3)), ("efficiency", tuple(range(4, 12))))


def test_homogeneous_cores_have_no_classes_and_say_why(fake):
    fake.desktop_basics()
    for c in range(4):
        fake.write(f"sys/devices/system/cpu/cpu{c}/cpu_capacity", 1024)
    cpu, notes = CpuReader(fake.sys, fake.proc).read()
    assert cpu.core_classes == () and "homogeneous" in (notes.get("cpu.core_classes") or "")


def test_frequency_falls_back_to_cpuinfo(fake):
    fake.write("proc/cpuinfo", "processor\t: 0\ncpu MHz\t\t: 2400.5\nprocessor\t: 1\ncpu MHz\t\t: 2399.5")
    cpu, _ = CpuReader(fake.sys, fake.proc).read()
    assert cpu.freq_mhz == pytest.approx(2400.0)


@pytest.mark.parametrize("loadavg, stat, online", [
    ("abc", "cpu  a b c d", "x-y"),
    ("", "", ""),
    ("-1 0 0", "cpu  -5 0 0 0", "3-1"),
])
def test_malformed_cpu_files_give_nulls_with_reasons(fake, loadavg, stat, online):
    fake.write("proc/loadavg", loadavg)
    fake.write("proc/stat", stat)
    fake.write("sys/devices/system/cpu/online", online)
    cpu, notes = CpuReader(fake.sys, fake.proc).read()
    assert cpu.load_1m is None and cpu.online is None and cpu.busy_s_total is None
    assert notes.get("cpu.load_1m") and notes.get("cpu.online") and notes.get("cpu.util_percent")
