#!/usr/bin/env python3
"""Generates the Grafana dashboards in dashboards/*.json (Python 3 standard library only).

    python3 scripts/gen-dashboards.py

The JSON files are committed; edit this script, re-run it, commit both. tests/dashboards.rs
checks the result: schema version, stable uids, variables, datasources, units, and that
every threshold equals the alert threshold it names ("Alert threshold: NAME = VALUE" in
the panel description; NAME is a gravity:*_threshold_* recording rule of
alerts/gravity-recording.rules.yml or an alert name).
"""
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DS = {"type": "prometheus", "uid": "${datasource}"}
# Every pipeline series: the three dashboard variables.
S = 'job=~"$job", instance=~"$instance", pipeline=~"$pipeline"'
# Recorded aggregates are per pipeline identity and have no instance: select job and
# pipeline, and join gravity_up of the selected instances (`and on (identity) gravity_up{S}`).
SR = 'job=~"$job", pipeline=~"$pipeline"'

# Alert thresholds (defaults of alerts/gravity-recording.rules.yml).
LAG = ("gravity:lag_threshold_seconds", 300, "GravityReplicationLagHigh")
STALL = ("gravity:stall_threshold_seconds", 180, "GravityPipelineStalled")
ERRORS = ("gravity:error_rate_threshold_per_second", 0.05, "GravityErrorRateHigh")
RETRIES = ("gravity:retry_rate_threshold_per_second", 0.1, "GravityRetryStorm")
QUEUE = ("gravity:queue_saturation_threshold_ratio", 0.9, "GravityQueueSaturated")
CPU = ("gravity:cpu_threshold_cores", 2, "GravityCPUPressure")
MEM = ("gravity:memory_threshold_bytes", 4294967296, "GravityMemoryPressure")
FDS = ("gravity:fd_threshold_ratio", 0.8, "GravityFdPressure")
DISK = ("gravity:log_disk_free_threshold_ratio", 0.15, "GravityLogDiskFilling")
HEADROOM = ("gravity:binlog_purge_headroom_threshold_files", 2, "GravityBinlogPurgeImminent")
ETA = ("gravity:binlog_purge_eta_threshold_seconds", 14400, "GravityBinlogRetentionRunningOut")
CONSISTENCY = ("gravity:consistency_score_threshold_ratio", 1, "GravityDataConsistencyMismatch")
HEARTBEAT = ("gravity:heartbeat_lag_threshold_seconds", 120, "GravityHeartbeatProbeFailing")
CRASHLOOP = ("gravity:crashloop_restarts_threshold", 3, "GravityCrashLooping")
SLOWLOOP = ("gravity:slow_crashloop_restarts_threshold", 3, "GravitySlowCrashLoop")
MEMLIMIT = ("gravity:memory_limit_threshold_ratio", 0.9, "GravityMemoryPressure")
FILEGAP = ("gravity:binlog_files_behind_threshold_files", 5, "GravityBinlogFileGapGrowing")
OPLOG = ("gravity:oplog_headroom_threshold_seconds", 3600, "GravityOplogHeadroomLow")
CANARY_LAG = ("gravity:canary_lag_threshold_seconds", 300, "GravityCanaryLagHigh")
# A pipeline is (cluster, namespace, job, pipeline), never instance: aggregations keep it, so
# two environments with the same pipeline name are never summed together.
ID = "cluster, namespace, job, pipeline"
# Legends name the environment too: "billing" of staging and of prod are different lines.
PIPE = "{{namespace}}/{{job}}/{{pipeline}}"


def target(expr, legend="", ref="A", instant=False, fmt="time_series"):
    legend = legend.replace("{{pipeline}}", PIPE)
    t = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant, "editorMode": "code"}
    if fmt != "time_series":
        t["format"] = fmt
    return t


def targets(*specs, **kw):
    """specs: (expr, legend) tuples; refIds A, B, C..."""
    return [target(e, l, chr(ord("A") + i), **kw) for i, (e, l) in enumerate(specs)]


def steps_above(*thresholds):
    """Green below, red from the alert threshold up (alert fires above it)."""
    steps = [{"color": "green", "value": None}]
    for t in thresholds:
        steps.append({"color": "red", "value": t[1]})
    return {"mode": "absolute", "steps": steps}


def steps_below(t):
    """Red below, green from the alert threshold up (alert fires below it)."""
    return {"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": t[1]}]}


def base_steps(color="green"):
    return {"mode": "absolute", "steps": [{"color": color, "value": None}]}


def describe(text, *thresholds):
    for name, value, alert in thresholds:
        text += f" Alert threshold: {name} = {value} ({alert})."
    return text.strip()


def threshold_series(t, ref):
    """The recorded threshold itself, drawn as a dashed line (shows per-pipeline overrides).
    Per pipeline identity, limited to the selected jobs, instances and pipelines."""
    return target(f'max by ({ID}) ({t[0]}{{job=~"$job", pipeline=~"$pipeline"}} '
                  f'and on ({ID}) gravity_up{{{S}}})', "threshold {{pipeline}}", ref)


DASHED = {
    "matcher": {"id": "byRegexp", "options": "^threshold.*"},
    "properties": [
        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
        {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
        {"id": "custom.fillOpacity", "value": 0},
    ],
}


def timeseries(title, tgts, unit, desc="", thresholds=None, above=True, overrides=None, stack=False, w=12, h=8,
               minimum=None, maximum=None):
    th = list(thresholds or [])
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
              "spanNulls": False, "axisSoftMin": 0}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    if th:
        custom["thresholdsStyle"] = {"mode": "line"}
    defaults = {"unit": unit, "custom": custom,
                "thresholds": (steps_above(*th) if above else steps_below(th[0])) if th else base_steps(),
                "color": {"mode": "palette-classic"}}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    ov = list(overrides or [])
    if any(t["legendFormat"].startswith("threshold") for t in tgts):
        ov.append(DASHED)
    return {"type": "timeseries", "title": title, "description": describe(desc, *th), "datasource": DS,
            "fieldConfig": {"defaults": defaults, "overrides": ov},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": tgts, "_w": w, "_h": h}


def stat(title, tgts, unit, desc="", thresholds=None, above=True, mappings=None, text_mode="auto", w=4, h=4,
         color_mode="value", graph=True):
    th = list(thresholds or [])
    return {"type": "stat", "title": title, "description": describe(desc, *th), "datasource": DS,
            "fieldConfig": {"defaults": {
                "unit": unit, "mappings": mappings or [], "color": {"mode": "thresholds"},
                "thresholds": (steps_above(*th) if above else steps_below(th[0])) if th else base_steps()},
                "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": color_mode, "graphMode": "area" if graph else "none",
                        "textMode": text_mode, "justifyMode": "auto", "orientation": "auto"},
            "targets": tgts, "_w": w, "_h": h}


def state_timeline(title, tgts, desc="", mappings=None, w=12, h=8):
    return {"type": "state-timeline", "title": title, "description": desc, "datasource": DS,
            "fieldConfig": {"defaults": {"unit": "none", "mappings": mappings or [],
                                         "color": {"mode": "thresholds"}, "thresholds": base_steps(),
                                         "custom": {"fillOpacity": 80, "lineWidth": 0}},
                            "overrides": []},
            "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.9,
                        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False}},
            "targets": tgts, "_w": w, "_h": h}


def bargauge(title, tgts, unit, desc="", thresholds=None, above=True, w=12, h=8, minimum=0, maximum=None):
    th = list(thresholds or [])
    defaults = {"unit": unit, "min": minimum, "color": {"mode": "thresholds"},
                "thresholds": (steps_above(*th) if above else steps_below(th[0])) if th else base_steps()}
    if maximum is not None:
        defaults["max"] = maximum
    return {"type": "bargauge", "title": title, "description": describe(desc, *th), "datasource": DS,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
            "targets": tgts, "_w": w, "_h": h}


def table(title, tgts, desc="", overrides=None, transformations=None, w=24, h=8, unit="none", thresholds=None):
    th = list(thresholds or [])
    return {"type": "table", "title": title, "description": describe(desc, *th), "datasource": DS,
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": base_steps(), "custom": {"align": "auto"}},
                            "overrides": overrides or []},
            "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
            "transformations": transformations or [], "targets": tgts, "_w": w, "_h": h}


def heatmap(title, tgt, desc="", w=12, h=8):
    return {"type": "heatmap", "title": title, "description": desc, "datasource": DS,
            "fieldConfig": {"defaults": {"unit": "s"}, "overrides": []},
            "options": {"calculate": False, "yAxis": {"unit": "s", "axisPlacement": "left"},
                        "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                        "tooltip": {"show": True, "yHistogram": False}, "legend": {"show": True},
                        "rowsFrame": {"layout": "auto"}},
            "targets": [tgt], "_w": w, "_h": h}


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_w": 24, "_h": 1}


def column_override(name, unit, thresholds=None, above=True, cell="auto"):
    props = [{"id": "unit", "value": unit}]
    if thresholds:
        props.append({"id": "thresholds", "value": steps_above(*thresholds) if above else steps_below(thresholds[0])})
        props.append({"id": "custom.cellOptions", "value": {"type": "color-background", "mode": "basic"}})
    elif cell != "auto":
        props.append({"id": "custom.cellOptions", "value": {"type": cell}})
    return {"matcher": {"id": "byName", "options": name}, "properties": props}


UP_MAPPINGS = [{"type": "value", "options": {"0": {"text": "down", "color": "red", "index": 0},
                                             "1": {"text": "up", "color": "green", "index": 1}}}]
OK_MAPPINGS = [{"type": "value", "options": {"0": {"text": "fail", "color": "red", "index": 0},
                                             "1": {"text": "ok", "color": "green", "index": 1}}}]
ANY_IS_BAD = [{"type": "value", "options": {"0": {"text": "0", "color": "green", "index": 0}}},
              {"type": "range", "options": {"from": 1, "to": 1e12, "result": {"color": "red", "index": 1}}}]


def variables():
    # "All" of $job/$instance is `.+`: every series has a job and an instance, and `.*`
    # would also match series without one.
    def query_var(name, label, query, all_value=".+"):
        return {"name": name, "label": label, "type": "query", "datasource": DS,
                "definition": query, "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                "refresh": 2, "includeAll": True, "allValue": all_value, "multi": True, "sort": 1, "hide": 0,
                "regex": "", "options": [], "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}
    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": ""},
        query_var("job", "Job", "label_values(gravity_up, job)"),
        query_var("instance", "Instance", 'label_values(gravity_up{job=~"$job"}, instance)'),
        query_var("pipeline", "Pipeline", 'label_values(gravity_up{job=~"$job", instance=~"$instance"}, pipeline)',
                  all_value=".*"),
    ]}


def annotations():
    return {"list": [
        {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
         "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
        {"name": "gravity restarts", "datasource": DS, "enable": True, "hide": False, "iconColor": "red",
         "expr": f"changes(gravity_process_restarts_total{{{S}}}[$__rate_interval]) > 0",
         "step": "30s", "titleFormat": "gravity restarted", "textFormat": "pipeline {{pipeline}} on {{instance}}",
         "tagKeys": "pipeline", "useValueForTime": False},
        {"name": "config or version changes", "datasource": DS, "enable": True, "hide": False,
         "iconColor": "orange",
         "expr": "count by (cluster, namespace, job, instance, pipeline) (count by (cluster, namespace, job, instance, pipeline, config_hash, version) "
                 f"(last_over_time(gravity_pipeline_info{{{S}}}[$__rate_interval]))) > 1",
         "step": "30s", "titleFormat": "config or version changed",
         "textFormat": "pipeline {{pipeline}} on {{instance}}", "tagKeys": "pipeline", "useValueForTime": False},
        {"name": "P0/P1 alerts", "datasource": DS, "enable": True, "hide": False, "iconColor": "dark-red",
         "expr": f'ALERTS{{alertstate="firing", alertname=~"Gravity.*", severity=~"P0|P1", {S}}}',
         "step": "30s", "titleFormat": "{{alertname}} ({{severity}})", "textFormat": "pipeline {{pipeline}}",
         "tagKeys": "severity,pipeline", "useValueForTime": False},
    ]}


def layout(panels):
    """Places panels left to right in a 24-column grid, rows on their own line; assigns ids."""
    out, x, y, line_h = [], 0, 0, 0
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("_w"), p.pop("_h")
        if p["type"] == "row" or x + w > 24:
            x, y, line_h = 0, y + line_h, 0
        p["id"] = i
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        out.append(p)
        if p["type"] == "row":
            y += h
        else:
            x += w
            line_h = max(line_h, h)
    return out


def dashboard(uid, title, description, panels):
    return {
        "uid": uid, "title": title, "description": description, "tags": ["gravity", "gravity-exporter"],
        "editable": True, "graphTooltip": 1, "id": None, "schemaVersion": 39, "version": 1,
        "refresh": "30s", "time": {"from": "now-6h", "to": "now"}, "timezone": "browser",
        "timepicker": {}, "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "links": [{"type": "dashboards", "title": "Gravity", "tags": ["gravity"], "asDropdown": True,
                   "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "annotations": annotations(), "templating": variables(), "panels": layout(panels),
    }


# --- Fleet overview --------------------------------------------------------------------
def fleet():
    per_pipeline = [
        # one row per pipeline identity (a pod being replaced is still one pipeline)
        (f"min by ({ID}) (gravity_up{{{S}}})", "Up"),
        (f"(gravity:watermark_lag_seconds:max{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "Lag"),
        (f"(gravity:watermark_stall_seconds:max{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "Stall"),
        (f"(gravity:input_rows_per_second{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "In"),
        (f"(gravity:output_rows_per_second{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "Out"),
        (f"(gravity:errors_per_second:rate5m{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "Errors"),
        (f"min by ({ID}) (gravity_health_score{{{S}}})", "Health"),
        (f"sum by ({ID}) (increase(gravity_process_restarts_total{{{S}}}[1d]))", "Restarts 24h"),
        (f"max by ({ID}, stage, version) (gravity_pipeline_info{{{S}}})", "Info"),
    ]
    tbl = table(
        "Pipelines",
        targets(*per_pipeline, instant=True, fmt="table"),
        "One row per pipeline. Click a pipeline for its detail dashboard.",
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True, "Value #I": True},
                "renameByName": {"Value #A": "up", "Value #B": "lag", "Value #C": "stall",
                                 "Value #D": "in rows/s", "Value #E": "out rows/s", "Value #F": "errors/s",
                                 "Value #G": "health checks passing", "Value #H": "restarts 24h"}}},
        ],
        overrides=[
            column_override("up", "none", cell="color-text"),
            column_override("lag", "s", [LAG]),
            column_override("stall", "s", [STALL]),
            column_override("in rows/s", "rowsps"),
            column_override("out rows/s", "rowsps"),
            column_override("errors/s", "cps", [ERRORS]),
            column_override("health checks passing", "none"),
            column_override("restarts 24h", "none"),
            {"matcher": {"id": "byName", "options": "pipeline"},
             "properties": [{"id": "links", "value": [{
                 "title": "Pipeline detail", "targetBlank": False,
                 "url": "/d/gravity-pipeline?var-pipeline=${__value.raw}&${datasource:queryparam}&${__url_time_range}"}]}]},
        ],
        thresholds=[LAG, STALL, ERRORS],
        h=9,
    )
    tbl["fieldConfig"]["overrides"][0]["properties"].append({"id": "mappings", "value": UP_MAPPINGS})
    return dashboard("gravity-fleet", "Gravity / Fleet overview",
                     "Every gravity pipeline at a glance: who is down, behind, stalled or erroring.", [
        row("Now"),
        stat("Pipelines", targets((f"count(gravity_up{{{S}}})", "pipelines")), "none", "Pipelines watched.",
             graph=False),
        stat("Down", targets((f"count(gravity_up{{{S}}} == 0) or vector(0)", "down")), "none",
             "Pipelines whose gravity is not running or not answering (GravityDown).", mappings=ANY_IS_BAD,
             graph=False),
        stat("Firing P0", targets((f'count(ALERTS{{alertstate="firing", severity="P0", {S}}}) or vector(0)', "P0")),
             "none", "P0 alerts firing now: someone is being paged.", mappings=ANY_IS_BAD, graph=False),
        stat("Firing P1", targets((f'count(ALERTS{{alertstate="firing", severity="P1", {S}}}) or vector(0)', "P1")),
             "none", "P1 alerts firing now: act within the hour.", mappings=ANY_IS_BAD, graph=False),
        stat("Worst lag", targets((f"max((gravity:watermark_lag_seconds:max{{{SR}}} and on ({ID}) gravity_up{{{S}}}))", "lag")), "s",
             "The largest replication lag of all selected pipelines.", thresholds=[LAG]),
        stat("Worst stall", targets((f"max((gravity:watermark_stall_seconds:max{{{SR}}} and on ({ID}) gravity_up{{{S}}}))", "stall")), "s",
             "The longest time any selected pipeline has not moved its watermark.", thresholds=[STALL]),
        tbl,
        row("Trends"),
        timeseries("Replication lag", [target(f"(gravity:watermark_lag_seconds:max{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "{{pipeline}}"),
                                       threshold_series(LAG, "B")], "s",
                   "now - EventTime of the slowest stream per pipeline.", thresholds=[LAG]),
        timeseries("Stall", [target(f"(gravity:watermark_stall_seconds:max{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "{{pipeline}}"),
                             threshold_series(STALL, "B")], "s",
                   "now - ProcessTime: how long since the pipeline last moved a watermark.", thresholds=[STALL]),
        timeseries("Rows in (from the source)", targets((f"(gravity:input_rows_per_second{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "{{pipeline}}")),
                   "rowsps", "Source rows read per second (insert, update, delete, ddl; no heartbeat rows)."),
        timeseries("Rows out (to the target)", targets((f"(gravity:output_rows_per_second{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "{{pipeline}}")),
                   "rowsps", "Rows written to the target per second."),
        timeseries("Error lines", [target(f"(gravity:errors_per_second:rate5m{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "{{pipeline}}"),
                                   threshold_series(ERRORS, "B")], "cps",
                   "error/fatal/panic log lines per second (5 minute rate).", thresholds=[ERRORS]),
        timeseries("Health checks passing", targets((f"gravity_health_score{{{S}}}", "passing {{pipeline}}"),
                                                     (f"gravity_health_checks{{{S}}}", "evaluated {{pipeline}}")), "none",
                   "Number of the exporter's health checks that pass (process, API, watermarks, source, "
                   "target, log, resources), and how many could be evaluated (a check without its input, "
                   "such as reachability with probes off, is not checked).", minimum=0, maximum=7),
    ])


# --- Pipeline detail -------------------------------------------------------------------
def stage_quantile(q, metric):
    return f"histogram_quantile({q}, sum by (cluster, namespace, job, pipeline, le) (rate({metric}_bucket{{{S}}}[$__rate_interval])))"


STAGES = [
    ("gravity_input_latency", "input"),
    ("gravity_input_after_commit_latency", "input after-commit callback"),
    ("gravity_emitter_latency", "emitter"),
    ("gravity_scheduler_submit_latency", "scheduler submit"),
    ("gravity_scheduler_ack_latency", "scheduler ack"),
    ("gravity_scheduler_total_latency", "scheduler total"),
    ("gravity_output_latency", "output"),
]


def pipeline():
    funnel = [
        (f'sum by (cluster, namespace, job, pipeline) (rate(gravity_input_counter{{type!="ctl", {S}}}[$__rate_interval]))',
         "1 read from the source {{pipeline}}"),
        (f"sum by (cluster, namespace, job, pipeline) (rate(gravity_input_emitter_counter{{{S}}}[$__rate_interval]))",
         "2 input -> emitter {{pipeline}}"),
        (f"sum by (cluster, namespace, job, pipeline) (rate(gravity_emitter_scheduler_counter{{{S}}}[$__rate_interval]))",
         "3 emitter -> scheduler (after filters) {{pipeline}}"),
        (f"sum by (cluster, namespace, job, pipeline) (rate(gravity_scheduler_output_counter{{{S}}}[$__rate_interval]))",
         "4 scheduler -> output {{pipeline}}"),
        (f"sum by (cluster, namespace, job, pipeline) (rate(gravity_output_counter{{{S}}}[$__rate_interval]))",
         "5 written to the target {{pipeline}}"),
    ]
    funnel_total = [(e.replace("rate(", "increase(").replace("[$__rate_interval]", "[$__range]"), l)
                    for e, l in funnel]
    return dashboard("gravity-pipeline", "Gravity / Pipeline detail",
                     "One pipeline in depth: health, lag, the throughput funnel from input to output, "
                     "latency by stage, queues.", [
        row("Health"),
        stat("gravity", targets((f"gravity_up{{{S}}}", "{{pipeline}}")), "none",
             "1 while the process exists and its HTTP API answers (GravityDown fires after 1 minute of 0).",
             mappings=UP_MAPPINGS, graph=False, w=3),
        stat("/healthz", targets((f"gravity_healthz{{{S}}}", "{{pipeline}}")), "none",
             "gravity's own verdict: every watermark moved within its healthy-threshold (60 s).",
             mappings=OK_MAPPINGS, graph=False, w=3),
        stat("Health checks", targets((f"gravity_health_score{{{S}}}", "{{pipeline}}")), "none",
             "The exporter's checks passing, of those evaluated (gravity_health_checks; checks without "
             "their input, such as reachability with probes off, are not checked).", graph=False, w=3),
        stat("Stage", targets((f"gravity_pipeline_info{{{S}}}", "{{stage}}")), "none",
             "Incremental (streaming) or Full (dump).", text_mode="name", graph=False, w=3),
        stat("Version / config", targets((f"gravity_pipeline_info{{{S}}}", "{{version}} / {{config_hash}}")),
             "none", "gravity's version and the hash of its config file.", text_mode="name", graph=False, w=4),
        stat("Up for", targets((f"time() - gravity_process_start_time_seconds{{{S}}}", "{{pipeline}}")), "s",
             "Time since the current gravity process started.", graph=False, w=4),
        stat("Restarts (15 min)", targets((f"increase(gravity_process_restarts_total{{{S}}}[15m])", "{{pipeline}}")),
             "none", "Restarts in the last 15 minutes; GravityCrashLooping fires at the threshold.",
             thresholds=[CRASHLOOP], w=4),
        state_timeline("Health checks", targets((f"gravity_health_check{{{S}}}", "{{pipeline}} {{check}}")),
                       "Each health check over time: ok or fail.", mappings=OK_MAPPINGS, w=24, h=7),
        row("Lag"),
        timeseries("Replication lag by stream", [
            target(f"gravity_watermark_lag_seconds{{{S}}}", "{{pipeline}} {{stream}}"),
            threshold_series(LAG, "B")], "s",
            "now - EventTime: how far the target is behind the source, in event time. On an idle source the "
            "heartbeat keeps it near zero.", thresholds=[LAG]),
        timeseries("Stall by stream", [
            target(f"gravity_watermark_stall_seconds{{{S}}}", "{{pipeline}} {{stream}}"),
            threshold_series(STALL, "B")], "s",
            "now - ProcessTime: how long since the pipeline last moved this watermark.", thresholds=[STALL]),
        heatmap("Data lag distribution", target(
            f'sum by (le) (increase(gravity_data_lag_seconds_bucket{{schema="", table="", {S}}}[$__rate_interval]))',
            "{{le}}", fmt="heatmap"), "Lag observed at each collection (stream)."),
        timeseries("Data lag quantiles", targets(
            (f'histogram_quantile(0.5, sum by (cluster, namespace, job, pipeline, le) (rate(gravity_data_lag_seconds_bucket{{schema="", table="", {S}}}[$__rate_interval])))',
             "p50 {{pipeline}}"),
            (f'histogram_quantile(0.99, sum by (cluster, namespace, job, pipeline, le) (rate(gravity_data_lag_seconds_bucket{{schema="", table="", {S}}}[$__rate_interval])))',
             "p99 {{pipeline}}")), "s", "Quantiles of the observed lag."),
        row("Throughput funnel: input to output"),
        timeseries("Funnel (rows per second at each stage)", targets(*funnel), "rowsps",
                   "gravity's own counters from reading the binlog/oplog to writing the target. A gap between two "
                   "stages shows where rows stop: filters drop rows between 2 and 3, a slow target shows "
                   "between 4 and 5. Heartbeat rows are left out of stage 1 only.", w=16),
        bargauge("Funnel over the time range", targets(*funnel_total), "short",
                 "Rows through each stage over the dashboard's time range.", w=8),
        timeseries("Input by operation", targets(
            (f"sum by ({ID}, operation) (rate(gravity_input_rows_total{{{S}}}[$__rate_interval])) "
             f"or sum by ({ID}, operation) (gravity_throughput_rows_per_second{{{S}}})",
             "{{pipeline}} {{operation}}")), "rowsps",
            "Source rows per second by operation: rate() over gravity_input_rows_total, which counts every row "
            "(a rows/s gauge sampled at scrape time misses bursts between scrapes); the gauge for exporters "
            "without the counter.", w=8),
        timeseries("Output by kind", targets(
            (f"sum by (cluster, namespace, job, pipeline, kind) (gravity_output_rows_per_second{{{S}}})", "{{pipeline}} {{kind}}")),
            "rowsps", "Target rows per second, dml or ddl.", w=8),
        timeseries("Busiest tables (input)", targets(
            (f"topk(10, sum by ({ID}, schema, table) (rate(gravity_input_rows_total{{{S}}}[$__rate_interval])) "
             f"or sum by ({ID}, schema, table) (gravity_throughput_rows_per_second{{{S}}}))",
             "{{pipeline}} {{schema}}.{{table}}")), "rowsps", "The 10 tables with most source rows per second.",
            w=8),
        timeseries("Output against the same hour last week", targets(
            (f"(gravity:output_rows_per_second:rate1h{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "this week {{pipeline}}"),
            (f"(gravity:output_rows_per_second:rate1h{{{SR}}} offset 1w and on ({ID}) gravity_up{{{S}}})", "last week {{pipeline}}")), "rowsps",
            "Hourly output rate and the same hour a week ago (GravityThroughputDegraded compares them while "
            "the pipeline is behind)."),
        timeseries("Output latency p99 against last week", targets(
            (f"(gravity:output_latency_seconds:p99_1h{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "this week {{pipeline}}"),
            (f"(gravity:output_latency_seconds:p99_1h{{{SR}}} offset 1w and on ({ID}) gravity_up{{{S}}})", "last week {{pipeline}}")), "s",
            "p99 of the time a write to the target takes, over 1 hour (GravityLatencyDegraded)."),
        row("Latency by stage"),
        timeseries("p99 latency by stage", targets(*[(stage_quantile(0.99, m), f"{n} {{{{pipeline}}}}")
                                                     for m, n in STAGES]), "s",
                   "gravity's stage histograms: where time is spent between reading and writing.", w=12),
        timeseries("p50 latency by stage", targets(*[(stage_quantile(0.5, m), f"{n} {{{{pipeline}}}}")
                                                     for m, n in STAGES]), "s",
                   "Median of the same stage histograms.", w=12),
        timeseries("End to end p99", targets(
            (stage_quantile(0.99, "gravity_event_time_latency"), "event time {{pipeline}}"),
            (stage_quantile(0.99, "gravity_process_time_latency"), "process time {{pipeline}}"),
            (stage_quantile(0.99, "gravity_input_probe_latency"), "heartbeat round trip {{pipeline}}")), "s",
            "From the source's commit (event time) or from gravity reading it (process time) to the target."),
        row("Queues"),
        timeseries("Queue saturation", [
            target(f"(gravity:queue_saturation:ratio{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "{{pipeline}}"),
            threshold_series(QUEUE, "B")], "percentunit",
            "The fullest bounded queue: the scheduler's sliding window, or a worker queue against queue-size.",
            thresholds=[QUEUE], maximum=1),
        timeseries("Queue lengths by type", targets(
            (f"sum by (cluster, namespace, job, pipeline, type) (gravity_queue_length{{{S}}})", "{{pipeline}} {{type}}")), "short",
            "gravity's queues: input buffer, per-table buffers and latches, worker queues, sliding window."),
        timeseries("Worker queues", targets(
            (f'gravity_queue_length{{type="worker", {S}}}', "{{pipeline}} {{subtype}}")), "short",
            "Messages waiting in each worker's queue (capacity: the scheduler's queue-size)."),
        stat("Workers", targets((f"gravity_scheduler_nr_worker{{{S}}}", "{{pipeline}}")), "none",
             "Output workers (nr-worker).", graph=False, w=6),
        stat("Batch size", targets((f"avg by (cluster, namespace, job, pipeline) (gravity_scheduler_batch_size{{{S}}})", "{{pipeline}}")),
             "none", "Average batch per worker.", w=6),
    ])


# --- Errors and retries ----------------------------------------------------------------
def errors():
    return dashboard("gravity-errors", "Gravity / Errors and retries",
                     "What gravity logs and retries, what made it exit, and restarts.", [
        row("Errors"),
        timeseries("Error lines per second", [
            target(f"(gravity:errors_per_second:rate5m{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "{{pipeline}}"), threshold_series(ERRORS, "B")],
            "cps", "error/fatal/panic lines per second, 5 minute rate.", thresholds=[ERRORS]),
        timeseries("Errors by component and type", targets(
            (f'sum by (cluster, namespace, job, pipeline, component, error_type) (rate(gravity_error_total{{level=~"error|fatal|panic", {S}}}[$__rate_interval]))',
             "{{pipeline}} {{component}}/{{error_type}}")), "cps",
            "Which part of gravity fails, and why (from the driver error in the log line).", stack=True),
        timeseries("Warnings with a cause", targets(
            (f'sum by (cluster, namespace, job, pipeline, component, error_type) (rate(gravity_error_total{{level="warning", {S}}}[$__rate_interval]))',
             "{{pipeline}} {{component}}/{{error_type}}")), "cps",
            "Warnings that carry a cause: retries, failed heartbeat probes, reconnects.", stack=True),
        timeseries("Log lines by level", targets(
            (f"sum by (cluster, namespace, job, pipeline, level) (rate(gravity_log_lines_total{{{S}}}[$__rate_interval]))",
             "{{pipeline}} {{level}}")), "cps", "All log lines read, by level."),
        row("Retries"),
        timeseries("Retries per second", [
            target(f"(gravity:retries_per_second:rate5m{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "{{pipeline}}"), threshold_series(RETRIES, "B")],
            "cps", "All retries, 5 minute rate. A batch that runs out of retries makes gravity exit.",
            thresholds=[RETRIES]),
        timeseries("Retries by reason", targets(
            (f"sum by (cluster, namespace, job, pipeline, component, reason) (rate(gravity_retry_total{{{S}}}[$__rate_interval]))",
             "{{pipeline}} {{component}}/{{reason}}")), "cps", "Retries by the cause of the failed attempt.",
            stack=True),
        timeseries("gravity's own retry counter", targets(
            (f"sum by (cluster, namespace, job, pipeline) (rate(gravity_scheduler_retry_counter{{{S}}}[$__rate_interval]))",
             "{{pipeline}}")), "cps", "gravity_scheduler_retry_counter: failed attempts of a MySQL output batch."),
        timeseries("Connection probe failures", targets(
            (f"sum by (cluster, namespace, job, pipeline, component, endpoint, reason) (rate(gravity_connection_probe_failures_total{{{S}}}[$__rate_interval]))",
             "{{pipeline}} {{component}} {{endpoint}} {{reason}}")), "cps",
            "The exporter's own probes of source and target that failed, by reason."),
        row("Exits and restarts"),
        timeseries("Restarts in the last 15 minutes", [
            target(f"increase(gravity_process_restarts_total{{{S}}}[15m])", "{{pipeline}}"),
            threshold_series(CRASHLOOP, "B")], "none",
            "GravityCrashLooping fires at the threshold, like systemd's StartLimitBurst.",
            thresholds=[CRASHLOOP]),
        timeseries("Restarts in the last 2 hours (slow crash loops)", [
            target(f"sum by ({ID}) (increase(gravity_process_restarts_total{{{S}}}[2h]))", "{{pipeline}}"),
            threshold_series(SLOWLOOP, "B")], "none",
            "Restarts over 2 hours, summed over the pods that served the pipeline: a restart every 8 minutes "
            "never reaches the 15-minute threshold but shows here (GravitySlowCrashLoop).",
            thresholds=[SLOWLOOP]),
        table("Last exit reason", targets(
            (f"gravity_process_last_exit_info{{{S}}}", ""),
            (f"gravity_process_last_exit_timestamp_seconds{{{S}}} * 1000", ""), instant=True, fmt="table"),
            "How gravity's last process ended: fatal (with the classified cause), panic, signal (a deliberate "
            "SIGTERM/SIGINT stop: GravityStopped, then GravityDown after the grace), oom_killed (the cgroup's "
            "memory.events), unknown.",
            transformations=[{"id": "merge", "options": {}},
                             {"id": "organize", "options": {"excludeByName": {"Time": True, "Value #A": True,
                                                                                 "__name__": True},
                                                            "renameByName": {"Value #B": "exited at"}}}],
            overrides=[column_override("exited at", "dateTimeAsIso")], h=6),
        timeseries("Exits", targets(
            (f"increase(gravity_process_exits_total{{{S}}}[$__rate_interval])", "exits {{pipeline}}"),
            (f"increase(gravity_process_restarts_total{{{S}}}[$__rate_interval])", "restarts {{pipeline}}")),
            "none", "The watched process went away, and a new one appeared."),
        table("Last fatal log line", targets(
            (f"gravity_last_fatal_info{{{S}}} == 1", ""),
            (f"gravity_last_fatal_timestamp_seconds{{{S}}} * 1000", ""), instant=True, fmt="table"),
            "The cause of the last fatal/panic line and when it was logged.",
            transformations=[{"id": "merge", "options": {}},
                             {"id": "organize", "options": {"excludeByName": {"Time": True, "Value #A": True},
                                                            "renameByName": {"Value #B": "logged at"}}}],
            overrides=[column_override("logged at", "dateTimeAsIso")], h=6),
    ])


# --- Source and binlog retention -------------------------------------------------------
def source():
    return dashboard("gravity-source", "Gravity / Source and binlog retention",
                     "Connections to source and target, how far gravity is behind in the binlog, and how "
                     "close the binlog purge (or the Mongo oplog's roll-over) is to its position.", [
        row("Connections"),
        state_timeline("Connection health", targets(
            (f"gravity_connection_health{{{S}}}", "{{pipeline}} {{component}} {{endpoint}}")),
            "The exporter's login probe of each endpoint: ok or fail (GravitySourceUnreachable, "
            "GravityTargetUnreachable after 2 minutes).", mappings=OK_MAPPINGS),
        timeseries("Probe latency p99", targets(
            (f"histogram_quantile(0.99, sum by (cluster, namespace, job, pipeline, component, endpoint, le) (rate(gravity_connection_probe_duration_seconds_bucket{{{S}}}[$__rate_interval])))",
             "{{pipeline}} {{component}} {{endpoint}}")), "s", "How long a login to each endpoint takes."),
        timeseries("gravity's established connections", targets(
            (f"gravity_connections_established{{{S}}}", "{{pipeline}} {{component}} {{endpoint}}")), "short",
            "TCP connections the gravity process holds to each endpoint."),
        row("Binlog"),
        stat("Binary logging on the source", targets(
            (f"gravity_source_binlog_enabled{{{S}}}", "{{pipeline}}")), "none",
            "log_bin of the MySQL source: OFF means nothing can be replicated (GravityBinlogDisabled).",
            mappings=[{"type": "value", "options": {"0": {"text": "OFF", "color": "red", "index": 0},
                                                    "1": {"text": "on", "color": "green", "index": 1}}}],
            graph=False, w=12),
        stat("Position's binlog", targets(
            (f"gravity_source_binlog_purge_headroom_files{{{S}}}", "{{pipeline}}")), "none",
            "Files of headroom before the purge reaches gravity's position; PURGED (-1): the position's "
            "binlog is gone and the pipeline must be re-initialised (GravityBinlogPurged).",
            mappings=[{"type": "value", "options": {"-1": {"text": "PURGED", "color": "red", "index": 0}}}],
            graph=False, w=12),
        timeseries("Binlog files behind the source", [
            target(f"gravity_source_binlog_files_behind{{{S}}}", "{{pipeline}}"),
            threshold_series(FILEGAP, "B")], "none",
            "Binlog files between gravity's position and the source's current one. Over the threshold and "
            "growing for 10 minutes pages, whatever the heartbeat lag says.", thresholds=[FILEGAP]),
        timeseries("Binlog bytes behind the source", targets(
            (f"gravity_source_binlog_bytes_behind{{{S}}}", "{{pipeline}}")), "bytes",
            "Bytes of binlog gravity still has to read."),
        timeseries("Purge headroom (files)", [
            target(f"gravity_source_binlog_purge_headroom_files{{{S}}}", "{{pipeline}}"),
            threshold_series(HEADROOM, "B")], "none",
            "Binlog files between the oldest one the source keeps and gravity's position. Below the threshold "
            "the next purge can delete what gravity still needs.", thresholds=[HEADROOM], above=False),
        timeseries("Purge headroom (bytes)", targets(
            (f"gravity_source_binlog_purge_headroom_bytes{{{S}}}", "{{pipeline}}")), "bytes",
            "Bytes between the oldest retained binlog and gravity's position."),
        timeseries("Time until retention can purge the position", [
            target(f"(gravity:binlog_purge_eta_seconds{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "{{pipeline}}"), threshold_series(ETA, "B")], "s",
            "Retention minus the age of gravity's position (a lower bound; Incremental stage, time-based "
            "retention only).", thresholds=[ETA], above=False),
        stat("Binlog retention", targets((f"gravity_source_binlog_retention_seconds{{{S}}}", "{{pipeline}}")), "s",
             "binlog_expire_logs_seconds (or expire_logs_days); 0 means no automatic purge.", graph=False, w=6),
        stat("Position stalled", targets((f"gravity_source_position_stalled{{{S}}}", "{{pipeline}}")), "none",
             "1 when the source's position moved and gravity's did not (GravityBinlogPositionStalled).",
             mappings=ANY_IS_BAD, graph=False, w=6),
        timeseries("Binlog file", targets((f"gravity_binlog_file_index{{{S}}}", "{{pipeline}} {{position}}")),
                   "none", "Number of the binlog file gravity is at (current) and started from (start)."),
        timeseries("Binlog offset", targets((f"gravity_binlog_offset_bytes{{{S}}}", "{{pipeline}} {{position}}")),
                   "bytes", "Offset in that binlog file."),
        timeseries("Oplog position age (MongoDB)", targets(
            (f"time() - gravity_oplog_position_timestamp_seconds{{{S}}}", "{{pipeline}}")), "s",
            "How old the oplog entry at gravity's position is."),
        timeseries("Oplog headroom (MongoDB)", [
            target(f"gravity_source_oplog_headroom_seconds{{{S}}}", "{{pipeline}}"),
            threshold_series(OPLOG, "B")], "s",
            "Seconds of oplog between the oldest entry the Mongo source keeps and gravity's position: the twin of "
            "the binlog purge headroom. Below the threshold the oplog can roll over the position soon; at 0 or "
            "below it has, and the pipeline must be re-initialised (GravityOplogPositionLost).",
            thresholds=[OPLOG], above=False),
        timeseries("Oplog window (MongoDB)", targets(
            (f"gravity_source_oplog_window_seconds{{{S}}}", "{{pipeline}}")), "s",
            "Seconds between the oldest and the newest entry of the Mongo source's oplog: how long gravity may "
            "stop before its position can fall out of it."),
        row("Full dump"),
        bargauge("Full dump progress by table", targets(
            (f"gravity_full_dump_progress_ratio{{{S}}}", "{{pipeline}} {{schema}}.{{table}}")), "percentunit",
            "Rows scanned / estimated per table; 100% when the table is done.", maximum=1),
        stat("Tables", targets((f"gravity_full_dump_tables{{{S}}}", "{{pipeline}} {{state}}")), "none",
             "Full-dump tables done and pending.", graph=False, w=6),
        stat("Position stored", targets((f"gravity_position_stored{{{S}}}", "{{pipeline}}")), "none",
             "0 while gravity has stored no position yet.", mappings=OK_MAPPINGS, graph=False, w=6),
    ])


# --- Data quality ----------------------------------------------------------------------
def quality():
    rows_in = (f'label_replace(sum by (cluster, namespace, job, pipeline, db, table) (increase(gravity_input_counter{{type="dml", {S}}}[$__range])), '
               '"schema", "$1", "db", "(.*)")')
    rows_out = (f'label_replace(label_replace(sum by (cluster, namespace, job, pipeline, cat0, cat1) (increase(gravity_output_counter{{cat2="dml", {S}}}[$__range])), '
                '"schema", "$1", "cat0", "(.*)"), "table", "$1", "cat1", "(.*)")')
    return dashboard("gravity-quality", "Gravity / Data quality",
                     "Does the target hold what the source holds: rows in against rows out, DDL, "
                     "the heartbeat, stage and config changes.", [
        row("Consistency (opt-in checker, --consistency.tables)"),
        timeseries("Consistency score by table", [
            target(f"gravity_data_consistency_score{{{S}}}", "{{pipeline}} {{schema}}.{{table}}", "A"),
            threshold_series(CONSISTENCY, "B")], "percentunit",
            "Share of compared chunks whose checksum matches between source and target, from the last "
            "completed run of the consistency checker. Below 1 for 30 minutes (several runs) fires the alert.",
            thresholds=[CONSISTENCY], above=False, minimum=0, maximum=1),
        table("Last consistency run", [
            target(f'sum by (cluster, namespace, job, pipeline, schema, table) (gravity_data_consistency_chunks{{result="mismatch", {S}}})', "", "A",
                   instant=True, fmt="table"),
            target(f'sum by (cluster, namespace, job, pipeline, schema, table) (gravity_data_consistency_rows{{side="source", {S}}})', "", "B",
                   instant=True, fmt="table"),
            target(f'sum by (cluster, namespace, job, pipeline, schema, table) (gravity_data_consistency_rows{{side="target", {S}}})', "", "C",
                   instant=True, fmt="table"),
            target(f"time() - max by (cluster, namespace, job, pipeline, schema, table) (gravity_data_consistency_last_run_timestamp_seconds{{{S}}})",
                   "", "D", instant=True, fmt="table"),
            target(f"min by (cluster, namespace, job, pipeline, schema, table) (gravity_data_consistency_check_success{{{S}}})", "", "E",
                   instant=True, fmt="table")],
            "Per checked table: chunks that differed on every comparison, rows counted on each side, how long "
            "ago the last run completed, and whether the last attempt completed (0: login, missing table, no "
            "primary key or timeout; the exporter's log says which).",
            transformations=[{"id": "merge", "options": {}},
                             {"id": "organize", "options": {"excludeByName": {"Time": True},
                                                            "renameByName": {"Value #A": "chunks differing",
                                                                             "Value #B": "source rows",
                                                                             "Value #C": "target rows",
                                                                             "Value #D": "last run",
                                                                             "Value #E": "last check ok"}}}],
            overrides=[column_override("chunks differing", "none"), column_override("source rows", "short"),
                       column_override("target rows", "short"), column_override("last run", "s"),
                       column_override("last check ok", "bool")], w=12),
        row("Rows and schema"),
        table("Rows in against rows out (time range)", [
            target(f"sum by (cluster, namespace, job, pipeline, schema, table) ({rows_in})", "", "A", instant=True, fmt="table"),
            target(f"sum by (cluster, namespace, job, pipeline, schema, table) ({rows_out})", "", "B", instant=True, fmt="table")],
            "DML rows read per source table and written per target table over the time range. Tables routed "
            "to another name, or filtered out, show on one side only.",
            transformations=[{"id": "merge", "options": {}},
                             {"id": "organize", "options": {"excludeByName": {"Time": True},
                                                            "renameByName": {"Value #A": "rows in",
                                                                             "Value #B": "rows out"}}}],
            overrides=[column_override("rows in", "short"), column_override("rows out", "short")], w=12),
        row("Schema changes"),
        timeseries("DDL replicated", targets(
            (f'sum by (cluster, namespace, job, pipeline, db, table) (increase(gravity_input_counter{{type="ddl", {S}}}[$__rate_interval]))',
             "{{pipeline}} {{db}}.{{table}}")), "none", "DDL statements read from the source (GravityDDLApplied)."),
        timeseries("DDL written to the target", targets(
            (f'sum by (cluster, namespace, job, pipeline, cat0, cat1, cat3) (increase(gravity_output_counter{{cat2="ddl", {S}}}[$__rate_interval]))',
             "{{pipeline}} {{cat0}}.{{cat1}} {{cat3}}")), "none", "DDL statements applied to the target, by kind."),
        table("Config and version", targets(
            (f"gravity_pipeline_info{{{S}}}", ""), instant=True, fmt="table"),
            "What each gravity runs now (GravityConfigChanged, GravityVersionChanged).",
            transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True,
                                                                                 "__name__": True}}}], w=12),
        stat("Stage", targets((f"gravity_full_dump{{{S}}}", "{{pipeline}}")), "none",
             "1 in the Full (dump) stage, 0 Incremental (GravityUnexpectedFullDump).",
             mappings=[{"type": "value", "options": {"0": {"text": "Incremental", "color": "green", "index": 0},
                                                     "1": {"text": "Full", "color": "blue", "index": 1}}}],
             w=12),
        row("Heartbeat"),
        timeseries("Heartbeat signature: lag against stall", [
            target(f"(gravity:watermark_lag_seconds:max{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "lag {{pipeline}}", "A"),
            target(f"(gravity:watermark_stall_seconds:max{{{SR}}} and on ({ID}) gravity_up{{{S}}})", "stall {{pipeline}}", "B"),
            threshold_series(HEARTBEAT, "C")], "s",
            "Lag growing while stall stays small and no rows arrive: gravity cannot write its heartbeat "
            "(gravity issue 226), nothing is really behind.", thresholds=[HEARTBEAT]),
        timeseries("Heartbeat round trips", targets(
            (f"rate(gravity_input_probe_latency_count{{{S}}}[$__rate_interval])", "{{pipeline}}")), "cps",
            "Heartbeat rows gravity wrote and read back per second (about 1 while it works)."),
        timeseries("Heartbeat round trip p99", targets(
            (stage_quantile(0.99, "gravity_input_probe_latency"), "{{pipeline}}")), "s",
            "From writing the heartbeat row on the source to reading it from the binlog."),
        timeseries("Data lag p99 by table", targets(
            (f"histogram_quantile(0.99, sum by (cluster, namespace, job, pipeline, schema, table, le) (rate(gravity_data_lag_seconds_bucket{{{S}}}[$__rate_interval])))",
             "{{pipeline}} {{schema}}.{{table}}")), "s",
            "Lag per table in batch mode; the stream (schema and table empty) otherwise."),
    ])


# --- Trace (the opt-in canary) ---------------------------------------------------------
def trace():
    arrived = f"sum by ({ID}) (increase(gravity_canary_arrived_total{{{S}}}[$__rate_interval]))"
    lost = f"sum by ({ID}) (increase(gravity_canary_lost_total{{{S}}}[$__rate_interval]))"
    p99 = [(stage_quantile(0.99, m), name) for m, name in STAGES]
    slowest = " or ".join(f'label_replace({q}, "stage", "{name}", "", "")' for q, name in p99)
    return dashboard("gravity-trace", "Gravity / Trace (canary)",
                     "End to end, measured from outside: the opt-in canary's rows from the source through "
                     "gravity to the target (docs/canary.md), and where gravity's own stage histograms say the "
                     "time goes. Each canary is also one trace (gravity.canary > source.write, gravity.input, "
                     "gravity.output) over OTLP.", [
        row("Canary (opt-in, --canary.interval)"),
        timeseries("Canary end-to-end lag", [
            target(f"gravity_canary_e2e_lag_seconds{{{S}}}", "{{pipeline}}", "A"),
            threshold_series(CANARY_LAG, "B")], "s",
            "Write at the source to visible at the target, of the last canary that arrived (the exporter's "
            "clock at both ends, so no clock skew). GravityCanaryLagHigh fires above the threshold for 10 minutes.",
            thresholds=[CANARY_LAG]),
        timeseries("Canary arrival ratio", targets(
            (f"{arrived} / ({arrived} + {lost})", "{{pipeline}}")), "percentunit",
            "Share of the canaries that finished in the interval and arrived (the rest were lost: not seen "
            "at the target within --canary.timeout). Below 1 with gravity healthy is silent loss "
            "(GravityCanaryLost).", minimum=0, maximum=1),
        stat("Canaries lost (time range)", targets(
            (f"sum by ({ID}) (increase(gravity_canary_lost_total{{{S}}}[$__range]))", "{{pipeline}}")), "none",
            "Canaries not seen at the target within --canary.timeout over the dashboard's time range.",
            w=6, h=6),
        stat("Canaries on the way", targets(
            (f"gravity_canary_pending{{{S}}}", "{{pipeline}}")), "none",
            "Written and neither seen at the target nor counted lost yet.", w=6, h=6),
        state_timeline("Canary writer", targets(
            (f"gravity_canary_writer_state{{{S}}} == 1", "{{pipeline}} {{reason}}")),
            "Why the writer writes or not: ok, read_only (the source is read-only), privilege (login or "
            "grant missing), unreachable, unsupported (no MySQL source and target), missing_table "
            "(--canary.create=false), disabled.", w=12, h=6),
        timeseries("Canary lag p99 (data lag histogram of the canary table)", targets(
            (f"histogram_quantile(0.99, sum by (cluster, namespace, job, pipeline, schema, table, le) "
             f"(rate(gravity_data_lag_seconds_bucket{{schema!=\"\", {S}}}[$__rate_interval])))",
             "{{pipeline}} {{schema}}.{{table}}")), "s",
            "gravity_data_lag_seconds observed with each canary for the canary table: the distribution of "
            "the end-to-end lag, not only the last value."),
        timeseries("Canaries per second", targets(
            (f"sum by ({ID}) (rate(gravity_canary_sent_total{{{S}}}[$__rate_interval]))", "sent {{pipeline}}"),
            (f"sum by ({ID}) (rate(gravity_canary_arrived_total{{{S}}}[$__rate_interval]))", "arrived {{pipeline}}"),
            (f"sum by ({ID}) (rate(gravity_canary_lost_total{{{S}}}[$__rate_interval]))", "lost {{pipeline}}")),
            "cps", "Written, arrived and lost canaries: one per --canary.interval is written."),
        row("Where the time goes (gravity's stage histograms: interval aggregates over all events)"),
        timeseries("Latency by stage p99", [target(q, f"{name} {{{{pipeline}}}}", chr(ord("A") + i))
                                            for i, (q, name) in enumerate(p99)], "s",
                   "gravity's own per-stage latency histograms, p99 per interval over every event of the "
                   "pipeline (not the canary alone): input, emitter (filters), scheduler submit and ack, output."),
        timeseries("Slowest stage over time", targets(
            (f"topk by ({ID}) (1, {slowest})", "{{pipeline}} {{stage}}")), "s",
            "The stage with the highest p99 latency in each interval: where the canary's time most likely "
            "went (the trace's gravity.input and gravity.output split it from outside)."),
    ])


# --- Resources and the exporter --------------------------------------------------------
EXPORTER = 'job=~"$job", instance=~"$instance"'
# Exporter-wide meta metrics (and `up`) carry no pipeline label: join it in from gravity_up,
# which also limits them to the exporters of the selected pipelines (an exporter serving
# several pipelines shows under one of them).
JOIN_PIPELINE = (f" * on (cluster, namespace, job, instance) group_left (pipeline) "
                 f"topk by (cluster, namespace, job, instance) (1, group by (cluster, namespace, job, instance, pipeline) (gravity_up{{{S}}}))")


def exporter_metric(m):
    return f"{m}{{{EXPORTER}}}{JOIN_PIPELINE}"


def exporter_pipeline_metric(m, wrap=lambda sel: sel):
    """An exporter self-metric kept per pipeline (gravity_exporter_collector_*, _passthrough_*).
    Exporters since issue 22 label them with `pipeline` (one exporter may serve several; the
    gravity_up join would then give every pipeline's series the same labels); older ones do not,
    and get it joined in from gravity_up as before."""
    labelled = wrap(f'{m}{{{EXPORTER}, pipeline=~"$pipeline", pipeline!=""}}')
    unlabelled = wrap(f'{m}{{{EXPORTER}, pipeline=""}}') + JOIN_PIPELINE
    return f"({labelled} or {unlabelled})"


def resources():
    return dashboard("gravity-resources", "Gravity / Resources and the exporter",
                     "CPU, memory, file descriptors, I/O and log disk of the gravity process, and the health of "
                     "gravity-exporter itself.", [
        row("gravity process"),
        timeseries("CPU", [target(f"rate(gravity_process_cpu_seconds_total{{{S}}}[$__rate_interval])", "{{pipeline}}"),
                           threshold_series(CPU, "B")], "none",
                   "CPU cores used (user + system).", thresholds=[CPU], w=8),
        timeseries("Resident memory", [target(f"gravity_process_resident_memory_bytes{{{S}}}", "{{pipeline}}"),
                                       threshold_series(MEM, "B")], "bytes",
                   "RSS of gravity. The fixed threshold applies when gravity runs without a memory limit.",
                   thresholds=[MEM], w=8),
        timeseries("Memory used of the cgroup limit", [
            target(f"gravity_process_resident_memory_bytes{{{S}}} / (gravity_process_memory_limit_bytes{{{S}}} > 0) "
                   f"or gravity_process_resident_memory_bytes{{{S}}} / on ({ID}) group_left () "
                   f"gravity:memory_threshold_bytes", "{{pipeline}}"),
            threshold_series(MEMLIMIT, "B")], "percentunit",
            "RSS as a share of gravity's cgroup memory limit (a pod's limit, systemd MemoryMax=): the kernel "
            "OOM-kills it at 100 %. Without a limit, as a share of the fixed gravity:memory_threshold_bytes, "
            "where GravityMemoryPressure fires at 100 %.", thresholds=[MEMLIMIT], maximum=1, w=8),
        timeseries("File descriptors used", [
            target(f"gravity_process_open_fds{{{S}}} / gravity_process_max_fds{{{S}}}", "{{pipeline}}"),
            threshold_series(FDS, "B")], "percentunit", "Open fds against the soft RLIMIT_NOFILE.",
            thresholds=[FDS], maximum=1, w=8),
        timeseries("Virtual memory", targets((f"gravity_process_virtual_memory_bytes{{{S}}}", "{{pipeline}}")),
                   "bytes", "VSZ of gravity.", w=8),
        timeseries("Threads and open fds", targets(
            (f"gravity_process_threads{{{S}}}", "threads {{pipeline}}"),
            (f"gravity_process_open_fds{{{S}}}", "open fds {{pipeline}}")), "short", "OS threads and open fds.",
            w=8),
        timeseries("Context switches", targets(
            (f"sum by (cluster, namespace, job, pipeline, kind) (rate(gravity_process_context_switches_total{{{S}}}[$__rate_interval]))",
             "{{pipeline}} {{kind}}")), "cps", "Voluntary and involuntary context switches.", w=8),
        timeseries("Storage I/O", targets(
            (f"rate(gravity_process_io_read_bytes_total{{{S}}}[$__rate_interval])", "read {{pipeline}}"),
            (f"rate(gravity_process_io_write_bytes_total{{{S}}}[$__rate_interval])", "write {{pipeline}}")),
            "Bps", "Bytes gravity reads from and writes to storage."),
        state_timeline("Process state", targets(
            (f"gravity_process_state{{{S}}} == 1", "{{pipeline}} {{state}}")),
            "running, sleeping, disk_sleep (D: stuck in I/O), zombie, stopped."),
        timeseries("Log disk free", [
            target(f"gravity:log_filesystem_avail:ratio{{{S}}}", "{{pipeline}}"),
            threshold_series(DISK, "B")], "percentunit",
            "Free share of the filesystem holding gravity's log (the exporter's statvfs, no node_exporter; "
            "GravityLogDiskFilling also needs the disk to be filling).", thresholds=[DISK], above=False,
            maximum=1),
        timeseries("Log last written", targets(
            (f"time() - gravity_log_last_write_timestamp_seconds{{{S}}}", "{{pipeline}}")), "s",
            "Seconds since gravity's log last grew."),
        row("gravity-exporter"),
        timeseries("Collector duration", targets(
            (exporter_pipeline_metric("gravity_exporter_collector_duration_seconds"), "{{pipeline}} {{collector}}")), "s",
            "How long each collector's last run took."),
        state_timeline("Collector success", targets(
            (exporter_pipeline_metric("gravity_exporter_collector_success"), "{{pipeline}} {{collector}}")),
            "0: the collector's metrics are its last good (stale) values (GravityExporterCollectorFailing).",
            mappings=OK_MAPPINGS),
        timeseries("Collector failures", targets(
            ("sum by (cluster, namespace, job, pipeline, collector) " + exporter_pipeline_metric(
                "gravity_exporter_collector_failures_total", lambda sel: f"rate({sel}[$__rate_interval])"),
             "{{pipeline}} {{collector}}")), "cps", "Failed, timed-out or panicked collector runs."),
        timeseries("Since last collector success", targets(
            (f"time() - {exporter_pipeline_metric('gravity_exporter_collector_last_success_timestamp_seconds')}",
             "{{pipeline}} {{collector}}")), "s", "How stale each collector's metrics are."),
        timeseries("Pass-through series", targets(
            (exporter_pipeline_metric("gravity_exporter_passthrough_series"), "passed through {{pipeline}}"),
            (exporter_pipeline_metric("gravity_exporter_passthrough_dropped_series_total",
                                      lambda sel: f"rate({sel}[$__rate_interval])"),
             "dropped/s {{pipeline}}")), "short",
            "Series of gravity's own /metrics passed through, and series dropped by the cap."),
        timeseries("Log tailer events", targets(
            (f"sum by (cluster, namespace, job, pipeline) (increase(gravity_log_rotations_total{{{S}}}[$__rate_interval]))", "rotations {{pipeline}}"),
            (f"sum by (cluster, namespace, job, pipeline) (increase(gravity_log_truncations_total{{{S}}}[$__rate_interval]))", "truncations {{pipeline}}"),
            (f"sum by (cluster, namespace, job, pipeline) (increase(gravity_log_oversized_lines_total{{{S}}}[$__rate_interval]))",
             "oversized lines {{pipeline}}")), "none", "Log rotations and truncations the tailer followed."),
        timeseries("Scrape", targets(
            (exporter_metric("up"), "up {{pipeline}}"),
            (exporter_metric("scrape_duration_seconds"),
             "scrape seconds {{pipeline}}")), "short",
            "Prometheus' view of the exporter (GravityExporterDown when it stops)."),
        table("Exporter build", targets(
            (exporter_metric("gravity_exporter_build_info"), ""), instant=True, fmt="table"),
            "gravity-exporter version and the Rust compiler it was built with; where process figures come from.",
            transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True,
                                                                                 "__name__": True}}}], w=12, h=5),
        stat("Process figures from", targets(
            (f"gravity_process_metrics_source{{{S}}} == 1", "{{pipeline}} {{source}}")), "none",
            "procfs (gravity's /proc) or gravity_metrics (gravity's own process_* families).",
            text_mode="name", graph=False, w=12, h=5),
    ])


# --- Topology and diagnosis -------------------------------------------------------------
INFINITY = {"type": "yesoreyeram-infinity-datasource", "uid": "${infinity}"}


def infinity_var():
    return {"name": "infinity", "label": "Infinity (JSON) data source", "type": "datasource",
            "query": "yesoreyeram-infinity-datasource", "current": {}, "hide": 0, "includeAll": False,
            "multi": False, "options": [], "refresh": 1, "regex": ""}


def node_graph():
    """The exporter's /api/topology (Grafana Node Graph frames) through the Infinity data source:
    one query for the nodes, one for the edges; repeated per selected exporter instance. The API
    needs the pipeline's name when the exporter serves several (one per host): select one
    pipeline."""
    def q(ref, root, fmt):
        return {"datasource": INFINITY, "refId": ref, "type": "json", "source": "url", "parser": "backend",
                "format": fmt, "url": "http://${instance}/api/topology?pipeline=${pipeline}", "url_options": {"method": "GET"},
                "root_selector": root, "columns": []}
    return {"type": "nodeGraph", "title": "Topology of ${pipeline} on ${instance}", "datasource": INFINITY,
            "description": "Source database(s) → input → emitter → scheduler → output → target(s), from the "
                           "exporter's /api/topology: rows per second on the edges, latency and queue fill on "
                           "gravity's stages, probe latency and connections on the databases; the ring is the "
                           "state (green ok, orange the stage the diagnosis names, red failing, grey unknown). "
                           "Needs the Infinity data source, Grafana able to reach the exporter, and one pipeline selected "
                           "(the exporter serves /api/topology?pipeline=NAME).",
            "repeat": "instance", "repeatDirection": "v", "maxPerRow": 1,
            "targets": [q("A", "nodes", "node-graph-nodes"), q("B", "edges", "node-graph-edges")],
            "fieldConfig": {"defaults": {"unit": "none"}, "overrides": []}, "options": {},
            "_w": 24, "_h": 10}


def topology():
    per_stage = [(f"sum by ({ID}) (rate({m}_sum{{{S}}}[$__rate_interval])) / "
                  f"sum by ({ID}) (rate({m}_count{{{S}}}[$__rate_interval]))", f"{name} {{{{pipeline}}}}")
                 for m, name in STAGES if m not in ("gravity_scheduler_total_latency",
                                                    "gravity_input_after_commit_latency")]
    d = dashboard("gravity-topology", "Gravity / Topology and diagnosis",
                  "Where the pipeline is held back: the topology from the exporter's /api/topology (Node Graph "
                  "through the Infinity data source), the diagnosis' bottleneck over time, and Prometheus-only "
                  "panels that work without Infinity: time per stage, queue fill by type, worker queues per index, "
                  "sliding-window fill (docs/diagnosis.md).", [
        row("Topology (Infinity data source: /api/topology of each exporter)"),
        node_graph(),
        row("Diagnosis"),
        state_timeline("Bottleneck", targets(
            (f"gravity_pipeline_bottleneck{{{S}}} == 1", "{{pipeline}} {{stage}}")),
            "The stage the exporter's diagnosis names over its window of collections (gravity_pipeline_bottleneck "
            "== 1): source, input, emitter, scheduler, output, target, or none. GravityBottleneck (P2) fires "
            "while lag rises with a stage named; /api/diagnosis has the figures and the settings to change.",
            w=16, h=6),
        table("Finding", targets(
            (f"gravity_pipeline_diagnosis_info{{{S}}}", "{{pipeline}}"), instant=True, fmt="table"),
            "The rule that decided (case) and the first suggestion: gravity's setting and the direction to move "
            "it (raise, lower, keep, nothing_to_tune). The reasons with their figures are in /api/diagnosis.",
            w=8, h=6),
        row("Where the time goes (Prometheus only)"),
        timeseries("Time per stage (stacked)", [target(e, l, chr(ord("A") + i)) for i, (e, l) in
                                                enumerate(per_stage)], "s",
                   "Mean time an event spends in each of gravity's stages per interval (Δsum/Δcount of its "
                   "histograms): the stage with the largest band holds the pipeline back. Output is the time inside "
                   "the write; scheduler submit grows with backpressure (window or table queue full).",
                   stack=True),
        timeseries("Queue fill by type", targets(
            (f"sum by ({ID}, type) (gravity_queue_length{{{S}}})", "{{pipeline}} {{type}}")), "none",
            "gravity_queue_length summed per type: input-buffer, worker, table-queue, table-buffer, table-latch, "
            "table-latch-ack, sliding-window-*. Worker queues near queue-size: writes are the limit; one table's "
            "table-queue and table-latch high with workers idle: hot rows."),
        timeseries("Worker queues per index", targets(
            (f'max by ({ID}, subtype) (gravity_queue_length{{type="worker", {S}}})', "{{pipeline}} worker {{subtype}}")),
            "none",
            "Each worker's queue length at its last dequeue (subtype is the worker's index 0…nr-worker−1): even "
            "and near queue-size means the workers cannot keep up; one high worker means DDL or a key that "
            "pins rows to it."),
        timeseries("Sliding-window fill", targets(
            (f"gravity_sliding_window_fill_ratio{{{S}}}", "{{pipeline}} {{stream}}")), "percentunit",
            "Items waiting in each input stream's sliding window over sliding-window-size (computed by the exporter: "
            "gravity's own ratio is an integer division that reads 0 until full). Full while nothing is written: a "
            "stuck item ('item not ack after N seconds').", minimum=0, maximum=1),
    ])
    d["templating"]["list"].append(infinity_var())
    return d


def main():
    out = os.path.join(ROOT, "dashboards")
    os.makedirs(out, exist_ok=True)
    for name, build in [("fleet", fleet), ("pipeline", pipeline), ("errors", errors), ("source", source),
                        ("quality", quality), ("trace", trace), ("resources", resources),
                        ("topology", topology)]:
        with open(os.path.join(out, f"gravity-{name}.json"), "w") as f:
            json.dump(build(), f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
