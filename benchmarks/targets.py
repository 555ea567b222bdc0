"""The CPU speed targets checked against one bench run's rows (``run_all``'s row dicts).

Each target names the rows it reads; a target whose rows the run did not measure (``--only``,
or no PyTorch for the ratios) is reported as not measured rather than met:

    LeNet-5 train step, batch 128           minigrad at least 1.0x PyTorch's speed
    ResNet-18 CIFAR train step, batch 32    at least 1.0x
    ResNet-18 CIFAR train step, batch 128   at least 1.0x
    each ResNet-18 conv layer fwd+bwd       at least 60% of sgemm (the row's own reference)
    peak memory of the ResNet-18 step       at most 1.5x PyTorch's
    process start to first LeNet step       under 3 s with a warm Numba cache
"""

SGEMM_N = 2048
SGEMM_FLOPS = 2 * SGEMM_N ** 3

SPEED_TARGETS = (("LeNet-5 train step", "LeNet-5 train step"),
                 ("ResNet-18 CIFAR train step, batch 32", "ResNet-18 step, batch 32"),
                 ("ResNet-18 CIFAR train step, batch 128", "ResNet-18 step, batch 128"))
MIN_SPEED_RATIO = 1.0
MIN_SGEMM_FRACTION = 0.60
MAX_MEMORY_RATIO = 1.5
MAX_WARM_START_S = 3.0


def sgemm_fraction(row, sgemm):
    """A row's rate over the sgemm rate it is compared with: its own reference (``ref_s``,
    timed around the row) when it has one, else ``sgemm`` (GFLOP/s); None without FLOPs."""
    if "flops" not in row or not row.get("minigrad_s"):
        return None
    ceiling = SGEMM_FLOPS / row["ref_s"] / 1e9 if "ref_s" in row else sgemm
    return row["flops"] / row["minigrad_s"] / 1e9 / ceiling


def _check(target, measured, limit, met):
    return {"target": target, "measured": measured, "limit": limit, "met": met}


def _not_measured(target, limit, why):
    return _check(target, f"not measured ({why})", limit, None)


def check(rows, sgemm):
    """One dict per target: ``target``, ``measured`` (text), ``limit`` (text) and ``met``
    (True, False, or None when the run did not measure it)."""
    checks = []
    for prefix, name in SPEED_TARGETS:
        limit = f">= {MIN_SPEED_RATIO:.1f}x PyTorch's speed"
        row = next((r for r in rows if r["workload"].startswith(prefix)), None)
        if row is None:
            checks.append(_not_measured(name, limit, "row not run"))
        elif not row.get("torch_s"):
            checks.append(_not_measured(name, limit, "no PyTorch"))
        else:
            ratio = row["torch_s"] / row["minigrad_s"]
            checks.append(_check(name, f"{ratio:.2f}x", limit, ratio >= MIN_SPEED_RATIO))
    convs = [(sgemm_fraction(r, sgemm), r["workload"]) for r in rows
             if r["workload"].startswith("conv ") and "flops" in r]
    limit = f">= {100 * MIN_SGEMM_FRACTION:.0f}% of sgemm"
    if convs:
        lowest, workload = min(convs)
        checks.append(_check(f"each conv layer fwd+bwd ({len(convs)} rows)",
                             f"lowest {100 * lowest:.1f}% ({workload})", limit,
                             lowest >= MIN_SGEMM_FRACTION))
    else:
        checks.append(_not_measured("each conv layer fwd+bwd", limit, "rows not run"))
    limit = f"<= {MAX_MEMORY_RATIO:.1f}x PyTorch's"
    row = next((r for r in rows if "minigrad_mb" in r), None)
    if row is None or "torch_mb" not in row:
        checks.append(_not_measured("peak memory, ResNet-18 step", limit,
                                    "row not run" if row is None else "no PyTorch"))
    else:
        ratio = row["minigrad_mb"] / row["torch_mb"]
        checks.append(_check("peak memory, ResNet-18 step", f"{ratio:.2f}x", limit,
                             ratio <= MAX_MEMORY_RATIO))
    limit = f"< {MAX_WARM_START_S:.0f} s"
    row = next((r for r in rows if r["workload"].startswith("process start to first LeNet step")
                and "warm cache" in r["workload"]), None)
    if row is None:
        checks.append(_not_measured("warm start to first LeNet step", limit, "row not run"))
    else:
        s = row["minigrad_s"]
        checks.append(_check("warm start to first LeNet step", f"{s:.2f} s", limit,
                             s < MAX_WARM_START_S))
    return checks


def format_checks(checks):
    """Markdown table of ``check``'s result and a last line saying whether all were met."""
    lines = ["| target | measured | limit | met |", "|---|---|---|---|"]
    for c in checks:
        met = {True: "yes", False: "**no**", None: "-"}[c["met"]]
        lines.append(f"| {c['target']} | {c['measured']} | {c['limit']} | {met} |")
    verdicts = [c["met"] for c in checks]
    if any(v is False for v in verdicts):
        lines.append("Targets: NOT all met in this run.")
    elif any(v is None for v in verdicts):
        lines.append("Targets: every measured target met; some were not measured in this run.")
    else:
        lines.append("Targets: all met in this run.")
    return "\n".join(lines)
