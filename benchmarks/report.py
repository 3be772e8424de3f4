"""The result document as a markdown table and a plot (throughput and latency against load)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _lat(lat: dict[str, Any] | None) -> str:
    if not lat or not lat.get("n"):
        return "-"
    return f"{lat['p50_ms']:.0f} / {lat['p95_ms']:.0f} / {lat['p99_ms']:.0f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return [*lines, ""]


def markdown(data: dict[str, Any]) -> str:
    env = data.get("environment", {})
    cfg = data.get("triton_config", {})
    lines = [
        "# Benchmark results",
        "",
        f"- started {env.get('started')} on `{env.get('host')}`, {env.get('cpu_count')} CPUs, Python "
        f"{env.get('python')}, commit `{env.get('git_commit')}`; device for the in-process model: "
        f"{env.get('device')}; Triton config: {env.get('triton_config_name')}",
        f"- load average at start {_loads(env.get('load_average_start'))}, at end "
        f"{_loads(env.get('load_average_end'))}",
        f"- model `{cfg.get('model_version_name')}`; Triton: max batch {cfg.get('max_batch_size')}, "
        "queue delay "
        f"{cfg.get('queue_delay_us')} us, {cfg.get('instances')} instance(s) x {cfg.get('torch_threads')} "
        "torch thread(s)",
        f"- inputs: {data.get('inputs', {}).get('counts')}",
        "",
    ]
    summary = data.get("summary", {})
    if summary:
        lines += ["## Headline", ""]
        rows = []
        for kind, s in summary.items():
            rows.append(
                [
                    kind,
                    f"{_f(s['model_items_per_s'])} (batch {s['model_best_batch']})",
                    _f(s["triton_best_rows_per_s"]),
                    _f(s["stream_events_per_s"]),
                    _f(s["naive_events_per_s"]),
                    _f(s["pipeline_efficiency"], 2),
                    _f(s["microbatched_vs_naive"], 1),
                    f"{_f(s.get('cpu_efficiency'), 2)} ({_f(s.get('model_cpu_ms_per_item'))} / "
                    f"{_f(s.get('service_cpu_ms_per_event'))} ms)",
                    f"{_lat(s['latency_at_half'])} at {_f(s['latency_at_half_rate'])}/s",
                    _lat(s["naive_latency_at_half"]),
                ]
            )
        lines += _table(
            [
                "kind",
                "model in-process /s",
                "Triton alone best /s",
                "stream /s",
                "naive stream /s",
                "efficiency (stream / model)",
                "micro-batched / naive",
                "CPU efficiency (model CPU/item / worker+Triton CPU/event)",
                "latency p50/p95/p99 ms at half rate",
                "naive p50/p95/p99 ms at half its rate",
            ],
            rows,
        )
    model = data.get("model")
    if model:
        lines += [
            f"## Model in-process ({model['device']}, {model['torch_threads']} torch threads, "
            f"{model['device_name']})",
            "",
        ]
        rows = []
        for kind, k in model["kinds"].items():
            for p in k["serving_path"]:
                rows.append(
                    [
                        kind,
                        str(p["batch_size"]),
                        _f(p["items_per_s"]),
                        _f(p["batch_ms_p50"]),
                        _f(p.get("cpu_ms_per_item")),
                    ]
                )
            rows.append(
                [
                    kind,
                    f"network only, {k['network_only']['batch_size']}",
                    _f(k["network_only"]["items_per_s"]),
                    "-",
                    "-",
                ]
            )
        lines += _table(["kind", "batch", "items/s", "batch p50 ms", "CPU ms/item"], rows)
    triton = data.get("triton")
    if triton:
        lines += ["## Triton alone (closed loop, concurrency x rows per request)", ""]
        rows = []
        for kind, points in triton.items():
            for p in points:
                srv = p.get("server", {})
                rows.append(
                    [
                        kind,
                        p["load"],
                        _f(p["rows_per_s"]),
                        _lat(p["latency"]),
                        _f(srv.get("mean_rows_per_execution")),
                        _f(srv.get("cpu_ms_per_row"), 2),
                        str(p["errors"]),
                    ]
                )
        lines += _table(
            [
                "kind",
                "load",
                "rows/s",
                "request p50/p95/p99 ms",
                "rows per execution",
                "server CPU ms/row",
                "errors",
            ],
            rows,
        )
    for key, title in (
        ("stream", "Stream, micro-batched"),
        ("naive", "Stream, naive (one event per request)"),
    ):
        section = data.get(key)
        if section:
            lines += _stream_section(title, section)
    sweep = data.get("sweep")
    if sweep:
        lines += _sweep_section(sweep)
    shadow = data.get("shadow")
    if shadow:
        lines += _shadow_section(shadow, summary)
    profile = data.get("profile")
    if profile:
        lines += _profile_section(profile)
    return "\n".join(lines) + "\n"


def _loads(values: Any) -> str:
    return "-" if not values else " / ".join(f"{v:.2f}" for v in values)


def _stream_section(title: str, section: dict[str, Any]) -> list[str]:
    cfg = section.get("config", {})
    lines = [
        f"## {title}",
        "",
        f"Worker settings: batch {cfg.get('batch_max_size')}, linger {cfg.get('batch_linger_ms')} ms, "
        f"{cfg.get('max_in_flight')} in flight, {cfg.get('agent_concurrency')} actors per agent; "
        f"{section.get('workers', 1)} worker process(es); load "
        f"average {_loads(section.get('load_average'))}.",
        "",
    ]
    rows = []
    for kind, k in section["kinds"].items():
        sat = k["saturated"]
        w = sat["during_window"]
        cpu = w.get("cpu_ms_per_event", {})
        rows.append(
            [
                kind,
                "saturated",
                _f(sat["events_per_s"]),
                "-",
                _f(w.get("worker_mean_rows_per_request")),
                _f((w.get("triton") or {}).get("mean_rows_per_execution")),
                " / ".join(_f(cpu.get(x), 2) for x in ("worker", "triton", "broker", "load_generator")),
                f"{sat['missing']} missing, {sum(sat['dead_letters'].values())} dead",
            ]
        )
        for p in k["paced"]:
            r = p["resources"]
            cpu = r.get("cpu_ms_per_event", {})
            rows.append(
                [
                    kind,
                    f"paced {p['fraction']:.2f}",
                    _f(p["offered_events_per_s"]),
                    _lat(p["latency"]),
                    _f(r.get("worker_mean_rows_per_request")),
                    _f((r.get("triton") or {}).get("mean_rows_per_execution")),
                    " / ".join(_f(cpu.get(x), 2) for x in ("worker", "triton", "broker", "load_generator")),
                    f"{p['missing']} missing, {sum(p['dead_letters'].values())} dead",
                ]
            )
    return lines + _table(
        [
            "kind",
            "phase",
            "events/s",
            "latency p50/p95/p99 ms",
            "rows per request",
            "rows per execution",
            "CPU ms/event worker / triton / broker / load gen",
            "accounting",
        ],
        rows,
    )


def _shadow_section(shadow: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    lines = [
        "## Shadow cost",
        "",
        "The micro-batched stream without a shadow, then with "
        f"`ECOM_SHADOW_VERSION={shadow.get('shadow_version')}` (the served version against itself), back to "
        "back; saturated.",
        "",
    ]
    rows = []
    for kind, s in summary.items():
        if s.get("shadow_on_events_per_s") is None:
            continue
        pairs = [
            (s[f"shadow_off_{key}"], s[f"shadow_on_{key}"], digits)
            for key, digits in (
                ("events_per_s", 1),
                ("worker_cpu_ms_per_event", 2),
                ("triton_cpu_ms_per_event", 2),
            )
        ]
        rows.append([kind, *(f"{_f(off, d)} / {_f(on, d)}" for off, on, d in pairs)])
    lines += _table(
        ["kind", "events/s off / on", "worker CPU ms/event off / on", "Triton CPU ms/event off / on"], rows
    )
    counts = shadow.get("on", {}).get("shadow", {})
    if counts:
        dropped = ", ".join(
            f"{k.removeprefix('dropped_')} {v:.0f}" for k, v in counts.items() if k.startswith("dropped_")
        )
        lines += [
            f"With the shadow: {counts.get('compared_rows', 0):.0f} rows compared "
            f"({counts.get('agree', 0):.0f} agreements, {counts.get('disagree', 0):.0f} disagreements "
            f"over the aspects compared), dropped {dropped}.",
            "",
        ]
    return lines


def _sweep_section(sweep: dict[str, Any]) -> list[str]:
    lines = ["## Tuning sweep", "", "Worker settings (one change at a time from the micro-batched run):", ""]
    rows = []
    for point in sweep.get("stream", []):
        cfg = point.get("config", {})
        if "error" in point:
            rows.append([cfg.get("name", "?"), "error", point["error"][:80], "", ""])
            continue
        for kind, k in point["kinds"].items():
            half = next((p for p in k["paced"] if abs(p["fraction"] - 0.5) < 1e-9), None)
            rows.append(
                [
                    cfg["name"],
                    kind,
                    _f(k["saturated"]["events_per_s"]),
                    _lat(half["latency"]) if half else "-",
                    _f(k["saturated"]["during_window"].get("worker_mean_rows_per_request")),
                ]
            )
    lines += _table(
        ["setting", "kind", "stream events/s", "p50/p95/p99 ms at half rate", "rows per request"], rows
    )
    rows = []
    for variant in [
        {"variant": "(served config)", "loads": sweep.get("triton_base")},
        *sweep.get("triton", []),
    ]:
        if variant.get("error"):
            rows.append([variant["variant"], "error", variant["error"][:80], "", ""])
            continue
        for kind, points in (variant.get("loads") or {}).items():
            for p in points:
                rows.append([variant["variant"], kind, p["load"], _f(p["rows_per_s"]), _lat(p["latency"])])
    if rows:
        lines += ["Triton settings (Triton alone):", ""]
        lines += _table(["variant", "kind", "load", "rows/s", "request p50/p95/p99 ms"], rows)
    return lines


def _profile_section(profile: dict[str, Any]) -> list[str]:
    if "skipped" in profile:
        return ["## Profile", "", f"Skipped: {profile['skipped']}", ""]
    lines = ["## Profile (py-spy, saturated stream)", ""]
    for kind, k in profile.get("kinds", {}).items():
        for name, summary in k["processes"].items():
            if "error" in summary:
                lines += [f"{kind} / {name}: py-spy failed: {summary['error']}", ""]
                continue
            lines += [
                f"**{kind} / {name}**: busy {summary.get('busy_share', math.nan):.0%} of the time "
                f"({summary['samples']} samples, {k['events_per_s_while_profiled']:.1f} events/s "
                "while sampled)",
                "",
            ]
            lines += _table(
                ["where (by leaf frame)", "share"],
                [[b["bucket"], f"{b['share']:.0%}"] for b in summary["buckets"][:8]],
            )
            lines += _table(
                ["function (self)", "share"],
                [[f"`{r['function']}`", f"{r['share']:.1%}"] for r in summary["self"][:8]],
            )
    return lines


def write_markdown(data: dict[str, Any], path: Path) -> None:
    path.write_text(markdown(data))


def write_plot(data: dict[str, Any], path: Path) -> None:
    """Per kind: throughput against load, Triton's latency against load, the stream's against load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(data.get("summary", {}) or data.get("triton", {}) or {})
    if not kinds:
        return
    fig, axes = plt.subplots(3, len(kinds), figsize=(6.5 * len(kinds), 13), squeeze=False)
    for col, kind in enumerate(kinds):
        top, middle, bottom = axes[0][col], axes[1][col], axes[2][col]
        summary = data.get("summary", {}).get(kind, {})
        points = data.get("triton", {}).get(kind, [])
        singles = [p for p in points if p["rows_per_request"] == 1]
        batched = [p for p in points if p["rows_per_request"] > 1]
        for series, label, marker in (
            (singles, "Triton alone, 1-row requests", "o"),
            (batched, "Triton alone, batched requests", "s"),
        ):
            if series:
                x = [p["rows_in_flight"] for p in series]
                top.plot(x, [p["rows_per_s"] for p in series], marker=marker, label=label)
                line = middle.plot(
                    x, [p["latency"]["p50_ms"] for p in series], marker=marker, label=f"{label} p50"
                )
                middle.plot(
                    x,
                    [p["latency"]["p99_ms"] for p in series],
                    marker=marker,
                    linestyle="--",
                    color=line[0].get_color(),
                    label=f"{label} p99",
                )
        for value, label, style in (
            (summary.get("model_items_per_s"), "model in-process (best batch)", "-"),
            (summary.get("stream_events_per_s"), "stream, saturated", "--"),
            (summary.get("naive_events_per_s"), "naive stream, saturated", ":"),
        ):
            if value:
                top.axhline(value, linestyle=style, color="black", label=label)
        for ax, ylabel in ((top, "rows or events per second"), (middle, "request latency, ms")):
            if ax.has_data():
                ax.set_xscale("log", base=2)
            ax.set_xlabel("rows in flight (Triton alone: concurrency x rows per request)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        top.set_ylim(bottom=0)
        top.set_title(f"{kind}: throughput against load")
        middle.set_title(f"{kind}: Triton alone, latency against load")
        for key, label, color in (("stream", "stream", "tab:blue"), ("naive", "naive stream", "tab:red")):
            section = data.get(key, {}).get("kinds", {}).get(kind, {})
            paced = section.get("paced", [])
            if paced:
                x = [p["offered_events_per_s"] for p in paced]
                for q, style in (("p50_ms", "-"), ("p95_ms", "-."), ("p99_ms", ":")):
                    bottom.plot(
                        x,
                        [p["latency"][q] for p in paced],
                        color=color,
                        linestyle=style,
                        marker="x",
                        label=f"{label} {q[:3]}",
                    )
            capacity = section.get("saturated", {}).get("events_per_s")
            if capacity:
                bottom.axvline(capacity, color=color, alpha=0.4, label=f"{label} saturated rate")
        bottom.set_xlabel("offered events per second")
        bottom.set_ylabel("event to enriched, ms")
        bottom.set_title(f"{kind}: stream latency against load")
        bottom.grid(alpha=0.3)
        if bottom.has_data():
            bottom.set_ylim(bottom=0)
            bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
