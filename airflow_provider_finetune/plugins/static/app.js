// The Fine-tuning page: the job list, a job view (curves, checkpoints, events, request, actions) and the
// task instance tab. Plain JavaScript, no dependency and no build: the api-server serves this file as is.
// Every text from the server goes into the page through textContent, never as HTML.
"use strict";

(function () {
  const PREFIX = location.pathname.replace(/\/finetune\/.*$/, "/finetune");
  const AIRFLOW = PREFIX.slice(0, -"/finetune".length); // Airflow's own UI, for links to DAGs, runs and tasks
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const PAGE = 25;
  const root = document.getElementById("root");
  let refreshTimer = null;

  // -- tiny DOM helpers -------------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }
  function when(seconds) {
    if (seconds === null || seconds === undefined) return "";
    return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }
  function number(value) {
    return value === null || value === undefined ? "" : Number(value).toLocaleString("en-US");
  }
  function cost(value) {
    // No currency is known (the services differ): the amount only, and a dash where none was recorded.
    return value === null || value === undefined ? "\u2014"
      : Number(value).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 4 });
  }
  function status(value) {
    return el("span", { class: "status " + (value || "unknown"), "data-status": value || "" }, value || "unknown");
  }
  function airflowLink(text, path) {
    return el("a", { href: AIRFLOW + path, target: "_top", text });
  }
  function enc(value) {
    return encodeURIComponent(value);
  }

  // -- the server -------------------------------------------------------------------------------------------
  async function call(path, options) {
    const init = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    // The page came with the token Airflow 3.1's UI keeps in local storage (static/signin.html): so do its calls.
    if (document.body.dataset.auth === "bearer") {
      init.headers = Object.assign({}, init.headers, { Authorization: "Bearer " + localStorage.getItem("token") });
    }
    const response = await fetch(PREFIX + path, init);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
      const error = new Error(response.status + ": " + detail);
      error.status = response.status;
      throw error;
    }
    return body;
  }
  function showError(error) {
    root.replaceChildren(el("div", { class: "error-box", id: "error", text: String(error.message || error) }));
  }

  // -- the list ---------------------------------------------------------------------------------------------
  async function renderList(params) {
    const offset = Number(params.get("offset") || 0);
    const query = new URLSearchParams({ offset, limit: PAGE });
    for (const key of ["dag_id", "status", "service"]) if (params.get(key)) query.set(key, params.get(key));
    const data = await call("/api/jobs?" + query);
    const go = (changes) => {
      const next = new URLSearchParams(params);
      for (const [key, value] of Object.entries(changes)) {
        if (value === "" || value === null) next.delete(key);
        else next.set(key, value);
      }
      history.pushState(null, "", "?" + [...next].map(([k, v]) => enc(k) + "=" + enc(v)).join("&"));
      route();
    };
    const filter = (name, label, values) =>
      el("label", {}, label + " ",
        el("select", { name, "data-filter": name, onchange: (e) => go({ [name]: e.target.value, offset: "" }) },
          el("option", { value: "", text: "all" }),
          values.map((v) => el("option", { value: v, text: v, selected: params.get(name) === v }))));
    const rows = data.jobs.map((job) =>
      el("tr", { "data-job-id": job.job_id },
        el("td", {}, el("a", { href: "?job_id=" + enc(job.job_id), class: "job-link", text: job.job_id })),
        el("td", {}, airflowLink(job.dag_id, "/dags/" + enc(job.dag_id))),
        el("td", { class: "run" }, airflowLink(job.run_id, "/dags/" + enc(job.dag_id) + "/runs/" + enc(job.run_id))),
        el("td", {}, airflowLink(job.task_id + (job.map_index >= 0 ? "[" + job.map_index + "]" : ""),
          "/dags/" + enc(job.dag_id) + "/runs/" + enc(job.run_id) + "/tasks/" + enc(job.task_id) +
          (job.map_index >= 0 ? "/mapped/" + job.map_index : ""))),
        el("td", {}, job.service || "", el("div", { class: "muted", text: job.conn_id || "" })),
        el("td", { text: job.model || "" }),
        el("td", {}, status(job.status)),
        el("td", { class: "wrap", text: job.fine_tuned_model || "" }),
        el("td", { text: when(job.created_at) }),
        el("td", { text: when(job.finished_at) }),
        el("td", { text: number(job.trained_tokens) }),
        el("td", { class: "cost", text: cost(job.estimated_cost) })));
    const pages = Math.max(1, Math.ceil(data.total / PAGE));
    root.replaceChildren(
      el("h1", { text: "Fine-tuning jobs" }),
      el("div", { class: "filters" },
        filter("dag_id", "DAG", data.filters.dags),
        filter("status", "Status", data.filters.statuses),
        filter("service", "Service", data.filters.services),
        el("span", { class: "muted", id: "total", text: data.total + " job" + (data.total === 1 ? "" : "s") })),
      data.total === 0
        ? el("p", { class: "notice", id: "empty", text: "No fine-tuning job was created by the DAGs you may read." })
        : el("table", { id: "jobs" },
          el("thead", {}, el("tr", {}, ["Job", "DAG", "Run", "Task", "Service", "Base model", "Status",
            "Fine-tuned model", "Created", "Finished", "Trained tokens", "Est. cost"].map((h) => el("th", { text: h })))),
          el("tbody", {}, rows)),
      el("div", { class: "pager" },
        el("button", { id: "prev", disabled: offset <= 0, onclick: () => go({ offset: Math.max(0, offset - PAGE) }) }, "‹ Newer"),
        el("span", { class: "muted", text: "page " + (Math.floor(offset / PAGE) + 1) + " of " + pages }),
        el("button", { id: "next", disabled: offset + PAGE >= data.total, onclick: () => go({ offset: offset + PAGE }) }, "Older ›")));
  }

  // -- a chart ----------------------------------------------------------------------------------------------
  function chart(id, title, points, series) {
    const W = 460, H = 220, L = 48, R = 12, T = 12, B = 28;
    const used = series.filter((s) => points.some((p) => typeof p[s.key] === "number"));
    const box = el("figure", { class: "chart", id, "data-points": points.length });
    box.append(el("figcaption", { text: title }));
    const steps = points.map((p) => p.step);
    const values = points.flatMap((p) => used.map((s) => p[s.key]).filter((v) => typeof v === "number"));
    const x0 = Math.min(...steps), x1 = Math.max(...steps);
    let y0 = Math.min(...values), y1 = Math.max(...values);
    if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
    const sx = (x) => L + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    const plot = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
    plot.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    plot.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    for (const [y, anchor] of [[y0, H - B], [y1, T + 8]]) {
      const label = svg("text", { x: L - 4, y: anchor, "text-anchor": "end" });
      label.textContent = Number(y.toPrecision(3)).toString();
      plot.append(label);
    }
    for (const [x, anchor] of [[x0, "start"], [x1, "end"]]) {
      const label = svg("text", { x: sx(x), y: H - 8, "text-anchor": anchor });
      label.textContent = "step " + x;
      plot.append(label);
    }
    for (const s of used) {
      const mine = points.filter((p) => typeof p[s.key] === "number");
      plot.append(svg("polyline", { class: s.cls, points: mine.map((p) => sx(p.step) + "," + sy(p[s.key])).join(" ") }));
      for (const p of mine) {
        const dot = svg("circle", { class: "pt " + s.cls, "data-series": s.key, "data-step": p.step,
          cx: sx(p.step), cy: sy(p[s.key]), r: mine.length > 150 ? 1 : 2 });
        const tip = svg("title", {});
        tip.textContent = s.label + " at step " + p.step + ": " + p[s.key];
        dot.append(tip);
        plot.append(dot);
      }
    }
    box.append(plot, el("div", { class: "legend" }, used.map((s) => el("span", { class: s.cls, text: s.label }))));
    return box;
  }

  // -- the job view -----------------------------------------------------------------------------------------
  async function act(job, verb) {
    if (verb === "cancel" && !window.confirm("Cancel fine-tuning job " + job.job_id + "?")) return;
    for (const button of root.querySelectorAll(".actions button")) button.disabled = true;
    try {
      await call("/api/jobs/" + enc(job.job_id) + "/" + verb, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
      });
    } catch (error) {
      root.prepend(el("div", { class: "error-box", id: "action-error", text: String(error.message) }));
      return;
    }
    route();
  }

  function renderJob(job, heading) {
    const m = job.metrics || [];
    const parts = [];
    parts.push(heading);
    const facts = [
      ["Status", status(job.status)],
      ["DAG / run / task", el("span", {}, airflowLink(job.dag_id, "/dags/" + enc(job.dag_id)), " / ",
        airflowLink(job.run_id, "/dags/" + enc(job.dag_id) + "/runs/" + enc(job.run_id)), " / ",
        airflowLink(job.task_id, "/dags/" + enc(job.dag_id) + "/runs/" + enc(job.run_id) + "/tasks/" + enc(job.task_id)))],
      ["Service", (job.service || "") + (job.conn_id ? " (connection " + job.conn_id + ")" : "")],
      ["Base model", job.model || ""],
      ["Fine-tuned model", job.fine_tuned_model || ""],
      ["Created", when(job.created_at)],
      ["Finished", when(job.finished_at)],
      ["Trained tokens", number(job.trained_tokens)],
      ["Est. cost", cost(job.estimated_cost)],
      job.error ? ["Error", job.error] : null,
      job.job_url ? ["Service page", el("a", { href: job.job_url, target: "_blank", rel: "noopener", text: job.job_url })] : null,
    ];
    parts.push(el("dl", { class: "facts" },
      facts.filter(Boolean).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)])));
    if (job.actions && job.actions.length) {
      parts.push(el("div", { class: "actions", id: "actions" }, job.actions.map((verb) =>
        el("button", { "data-action": verb, class: verb === "cancel" ? "danger" : "", onclick: () => act(job, verb) },
          verb[0].toUpperCase() + verb.slice(1)))));
    }
    parts.push(el("h2", { text: "Training curves" }));
    if (!m.length) {
      parts.push(el("p", { class: "notice", id: "no-metrics", text: job.supports && job.supports.events === false
        ? (job.service || "This service") + " gives no metrics for its jobs: there is no curve to draw."
        : "No metrics yet: the service has not reported any training step for this job." }));
    } else {
      const source = job.curves || {};
      parts.push(el("p", { class: "muted", id: "curves-source", "data-source": source.source || "",
        text: source.source === "result_file"
          ? "From the job's result file " + source.file_id + ": every step, " + m.length + " points."
          : "From the job's metrics events: " + m.length + " points." }));
      parts.push(el("div", { class: "charts" },
        chart("loss-chart", "Loss by step", m, [
          { key: "train_loss", label: "train loss", cls: "train" },
          { key: "valid_loss", label: "valid loss", cls: "valid" }]),
        chart("accuracy-chart", "Mean token accuracy by step", m, [
          { key: "train_mean_token_accuracy", label: "train accuracy", cls: "train" },
          { key: "valid_mean_token_accuracy", label: "valid accuracy", cls: "valid" }])));
    }
    parts.push(el("h2", { text: "Checkpoints" }));
    if (!job.checkpoints.length) {
      parts.push(el("p", { class: "muted", id: "no-checkpoints", text: job.supports && job.supports.checkpoints === false
        ? "This service keeps no checkpoints." : "No checkpoint yet." }));
    } else {
      const metric = (c, key) => (c.metrics[key] === undefined ? "" : Number(c.metrics[key]).toFixed(4));
      parts.push(el("table", { id: "checkpoints" },
        el("thead", {}, el("tr", {}, ["Step", "Checkpoint model", "Train loss", "Valid loss", "Full valid loss",
          "Valid accuracy", ""].map((h) => el("th", { text: h })))),
        el("tbody", {}, job.checkpoints.map((c) =>
          el("tr", { class: c.id === job.best_checkpoint ? "best" : "", "data-checkpoint": c.id },
            el("td", { text: c.step_number }), el("td", { class: "wrap", text: c.fine_tuned_model_checkpoint || c.id }),
            el("td", { text: metric(c, "train_loss") }), el("td", { text: metric(c, "valid_loss") }),
            el("td", { text: metric(c, "full_valid_loss") }), el("td", { text: metric(c, "valid_mean_token_accuracy") }),
            el("td", {}, c.id === job.best_checkpoint ? el("span", { class: "badge", title: "lowest validation loss", text: "best" }) : null))))));
    }
    parts.push(el("h2", { text: "Events" }));
    parts.push(job.events.length
      ? el("ul", { class: "timeline", id: "events" }, job.events.slice().reverse().map((e) =>
        el("li", { class: e.level }, el("span", { class: "muted", text: when(e.created_at) + "  " }), e.message)))
      : el("p", { class: "muted", text: "No events." }));
    parts.push(el("h2", { text: "Request" }));
    parts.push(job.request
      ? el("pre", { id: "request", text: JSON.stringify(job.request, null, 2) })
      : el("p", { class: "muted", text: "The request's rendered fields are not recorded." }));
    root.replaceChildren(...parts);
    clearTimeout(refreshTimer);
    if (!TERMINAL.has(job.status)) refreshTimer = setTimeout(route, 5000);
  }

  async function renderJobPage(params) {
    const job = await call("/api/jobs/" + enc(params.get("job_id")));
    renderJob(job, el("div", {}, el("a", { href: "?", id: "back", text: "‹ All fine-tuning jobs" }),
      el("h1", { text: "Fine-tuning job " + job.job_id })));
  }

  async function renderTask(params) {
    const query = new URLSearchParams({ dag_id: params.get("dag_id"), run_id: params.get("run_id"),
      task_id: params.get("task_id"), map_index: /^-?\d+$/.test(params.get("map_index") || "") ? params.get("map_index") : -1 });
    // The UI leaves {MAP_INDEX} as it is in the tab of a task that is not mapped: that is map index -1.
    const data = await call("/api/task?" + query);
    if (!data.job) {
      root.replaceChildren(el("p", { class: "notice", id: "no-job",
        text: "This task instance created no fine-tuning job (only FineTuningJobOperator tasks do)." }));
      return;
    }
    renderJob(data.job, el("h1", {}, "Fine-tuning job ",
      el("a", { href: PREFIX + "/?job_id=" + enc(data.job.job_id), target: "_top", text: data.job.job_id })));
  }

  // The page's query, "+" kept as it is: Airflow 3.1's UI puts a run id into the tab's URL unencoded, and the
  // "+" of its time zone is no space (3.2+ encode it, and neither they nor this page write "+" for a space).
  function pageParams() {
    const params = new URLSearchParams();
    for (const pair of location.search.replace(/^\?/, "").split("&")) {
      if (!pair) continue;
      const at = pair.indexOf("=");
      const [key, value] = at < 0 ? [pair, ""] : [pair.slice(0, at), pair.slice(at + 1)];
      try {
        params.append(decodeURIComponent(key), decodeURIComponent(value));
      } catch (error) {
        params.append(key, value); // not percent-encoded after all
      }
    }
    return params;
  }

  async function route() {
    clearTimeout(refreshTimer);
    const params = pageParams();
    try {
      if (params.get("job_id")) await renderJobPage(params);
      else if (params.get("dag_id") && params.get("run_id") && params.get("task_id")) await renderTask(params);
      else await renderList(params);
      document.body.dataset.ready = "true";
    } catch (error) {
      showError(error);
      document.body.dataset.ready = "true";
    }
  }

  window.addEventListener("popstate", route);
  route();
})();
