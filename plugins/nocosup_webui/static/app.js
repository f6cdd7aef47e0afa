// The App Supervisor page: plain JavaScript, no build step, no third-party code.
//
// State comes from the admin API (GET api/apps, GET api/environments) and is kept current
// by the server-sent events of api/events. A snapshot and the live events can cross: the
// page queues the events that arrive while a snapshot is on its way and replays them on
// top of it, so the newest state always wins.
"use strict";

(function () {
  const STATUS_CLASSES = {
    running: "ok", online: "ok",
    preparing: "busy", initializing: "busy", initialized: "busy", commanding: "busy",
    stopping: "busy",
    stopped: "idle", not_found: "idle",
    idle: "asleep",
    error: "bad", unavailable: "bad", offline: "bad",
  };

  // The statuses an app can have (the API's status filter takes one of them).
  const APP_STATUSES = [
    "running", "idle", "stopped", "error", "preparing", "initializing", "initialized",
    "commanding", "stopping", "not_found", "unavailable",
  ];
  const PAGE = 100;         // apps per page of the list
  const MAX_PAGE = 1000;    // the API's largest page

  const state = {
    apps: new Map(),        // name -> app JSON of the apps in view, kept current by events
    view: { prefix: "", status: "", environment: "" },  // the list's filters
    cursor: null,           // next_cursor of the last page shown (null: all shown)
    lastName: null,         // the last name on the pages shown
    total: 0,               // apps matching the filters
    filterTimer: null,
    envs: new Map(),        // name -> environment JSON
    pending: new Map(),     // app name -> "starting" | "stopping" | "moving" | "removing"
    openEnv: new Map(),     // app name -> environment chosen in its Open picker
    snapshots: new Map(),   // app name -> {count, queue}: app snapshots under way
    globalQueue: null,      // events held while the whole state is refetched
    refreshing: false,
    refreshAgain: false,
    source: null,           // the EventSource
    retryTimer: null,
    retryDelay: 1000,
    removing: null,         // app name shown in the remove dialog
    moving: null,           // app name shown in the move dialog
  };

  const $ = (id) => document.getElementById(id);

  // --- small helpers ---------------------------------------------------------------

  /** Build an element; children may be strings, nodes, or null (skipped). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else el.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function badge(status) {
    const tone = STATUS_CLASSES[status] || "idle";
    return h("span", { class: "badge badge-" + tone, text: status || "unknown" });
  }

  function appPath(name) {
    return "api/apps/" + encodeURIComponent(name);
  }

  function relativeTime(iso) {
    if (!iso) return "never";
    const then = Date.parse(iso);
    if (Number.isNaN(then)) return iso;
    const seconds = Math.max(0, Math.round((Date.now() - then) / 1000));
    if (seconds < 60) return seconds + " s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.round(seconds / 3600) + " h ago";
    return new Date(then).toLocaleString();
  }

  // --- the API -----------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, details) {
      super(message);
      this.status = status;
      this.code = code;
      this.details = details || {};
    }
  }

  /** Call the admin API; resolves to the JSON body (or null), rejects with ApiError. */
  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "NETWORK_ERROR", "the supervisor cannot be reached: " + err.message);
    }
    let data = null;
    const text = await response.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (err) {
        data = null;
      }
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      const { code, message, ...details } = error;
      throw new ApiError(
        response.status,
        code || "HTTP_" + response.status,
        message || (response.status + " " + response.statusText + (text ? ": " + text : "")),
        details,
      );
    }
    return data;
  }

  /** Run an API call made by the page; a lost session sends the user back to login. */
  async function guarded(promise) {
    try {
      return await promise;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        showLogin("Your session has ended: sign in again.");
      }
      throw err;
    }
  }

  // --- errors shown in the page ------------------------------------------------------

  function describe(err) {
    if (err instanceof ApiError) {
      let text = err.code + ": " + err.message;
      if (err.details.field) text += " (field: " + err.details.field + ")";
      return text;
    }
    return String(err && err.message ? err.message : err);
  }

  function showError(err) {
    if (err instanceof ApiError && err.status === 401) return; // the login view says it
    const box = $("errors");
    const text = describe(err);
    for (const existing of box.querySelectorAll(".error-text")) {
      if (existing.textContent === text) return;
    }
    const item = h(
      "div", { class: "error", role: "alert" },
      h("span", { class: "error-text", text }),
      h("button", {
        type: "button", class: "dismiss", "aria-label": "Dismiss", text: "×",
        onclick: () => item.remove(),
      }),
    );
    box.append(item);
  }

  function clearErrors() {
    $("errors").replaceChildren();
  }

  // --- login -------------------------------------------------------------------------

  function showLogin(message) {
    closeStream();
    state.apps.clear();
    state.envs.clear();
    $("apps-body").replaceChildren();
    $("envs-body").replaceChildren();
    for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
    clearErrors();
    $("main-view").hidden = true;
    $("session").hidden = true;
    $("login-view").hidden = false;
    $("login-error").textContent = message || "";
    $("login-token").value = "";
    $("login-token").focus();
  }

  function showMain() {
    $("login-view").hidden = true;
    $("login-error").textContent = "";
    $("main-view").hidden = false;
    $("session").hidden = false;
    selectTab(location.hash === "#environments" ? "environments" : "applications");
    refreshAll();
    openStream();
  }

  async function onLogin(event) {
    event.preventDefault();
    const token = $("login-token").value;
    $("login-error").textContent = "";
    try {
      await api("POST", "api/login", { token });
    } catch (err) {
      $("login-error").textContent = describe(err);
      $("login-token").select();
      return;
    }
    $("login-token").value = "";
    showMain();
  }

  async function onLogout() {
    try {
      await api("POST", "api/logout");
    } catch (err) {
      showError(err);
      return;
    }
    showLogin("");
  }

  // --- tabs --------------------------------------------------------------------------

  function selectTab(name) {
    for (const tab of document.querySelectorAll("[role=tab]")) {
      const selected = tab.dataset.tab === name;
      tab.setAttribute("aria-selected", String(selected));
      $(tab.getAttribute("aria-controls")).hidden = !selected;
    }
    if (location.hash !== "#" + name) history.replaceState(null, "", "#" + name);
  }

  // --- live events -------------------------------------------------------------------

  function setLive(kind, text) {
    const live = $("live");
    live.className = "live live-" + kind;
    live.textContent = text;
  }

  function openStream() {
    closeStream();
    setLive("connecting", "connecting…");
    const source = new EventSource("api/events");
    state.source = source;
    source.onopen = () => {
      state.retryDelay = 1000;
      setLive("on", "live");
      // Whatever happened while the stream was down is fetched again.
      refreshAll();
    };
    source.onerror = () => {
      if (state.source !== source) return;
      if (source.readyState === EventSource.CLOSED) {
        // Refused (401, 503, …): the browser gives up; find out why and try again later.
        closeStream();
        setLive("off", "offline");
        scheduleReconnect();
      } else {
        setLive("connecting", "reconnecting…");
      }
    };
    for (const type of ["app_status", "app_changed", "environment", "lagged", "shutdown"]) {
      source.addEventListener(type, (message) => {
        if (state.source !== source) return;
        let event;
        try {
          event = JSON.parse(message.data);
        } catch (err) {
          showError(new Error("unreadable event from the supervisor: " + message.data));
          return;
        }
        onEvent(event);
      });
    }
  }

  function closeStream() {
    if (state.retryTimer !== null) {
      clearTimeout(state.retryTimer);
      state.retryTimer = null;
    }
    if (state.source) {
      state.source.close();
      state.source = null;
    }
  }

  function scheduleReconnect() {
    const delay = state.retryDelay;
    state.retryDelay = Math.min(state.retryDelay * 2, 30000);
    state.retryTimer = setTimeout(async () => {
      state.retryTimer = null;
      try {
        await api("GET", "api/environments");
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) {
          showLogin("Your session has ended: sign in again.");
          return;
        }
      }
      openStream();
    }, delay);
  }

  function onEvent(event) {
    if (event.type === "lagged") {
      // The server dropped events we were too slow for: start again from a snapshot.
      refreshAll();
      return;
    }
    if (event.type === "shutdown") {
      setLive("connecting", "supervisor restarting…");
      return;
    }
    if (state.globalQueue) {
      state.globalQueue.push(event);
      return;
    }
    if (event.app && state.snapshots.has(event.app)) {
      state.snapshots.get(event.app).queue.push(event);
      return;
    }
    applyEvent(event);
  }

  function applyEvent(event) {
    switch (event.type) {
      case "app_status": {
        const env = state.envs.get(event.environment);
        // A late report from an environment known to be offline is stale.
        if (env && env.status === "offline") return;
        const app = state.apps.get(event.app);
        if (!app) {
          // Fetched only if it may belong in the view (its name alone may rule it out).
          if (inView({ name: event.app, environments: [event.environment],
                       statuses: { [event.environment]: event.status } })) {
            loadApp(event.app);
          }
          return;
        }
        app.statuses = Object.assign({}, app.statuses, { [event.environment]: event.status });
        const errors = Object.assign({}, app.errors);
        if (event.error) errors[event.environment] = event.error;
        else delete errors[event.environment];
        app.errors = errors;
        upsertApp(app);  // a status filter may let it out of the view
        return;
      }
      case "app_changed":
        if (event.action === "removed") {
          forgetApp(event.app);
        } else {
          loadApp(event.app);
        }
        return;
      case "environment": {
        const env = event.environment;
        if (!env || !env.name) return;
        const before = state.envs.get(env.name);
        if (env.status === "removed") state.envs.delete(env.name);
        else state.envs.set(env.name, env);
        renderEnvs();
        // The API derives the statuses of apps on an offline environment ("unavailable"):
        // when an environment comes or goes, fetch them again.
        if (!before || before.status !== env.status) refreshAll();
        return;
      }
      default:
        return; // a newer server may send types this page does not know yet
    }
  }

  /**
   * Apply an app snapshot that is on its way (a GET or an action's answer): events for
   * that app are held until it lands, then replayed on top of it.
   */
  async function withAppSnapshot(name, request) {
    let entry = state.snapshots.get(name);
    if (!entry) {
      entry = { count: 0, queue: [] };
      state.snapshots.set(name, entry);
    }
    entry.count += 1;
    try {
      const app = await request;
      if (app && app.name) upsertApp(app);
      return app;
    } catch (err) {
      if (err instanceof ApiError && err.code === "APP_NOT_FOUND") forgetApp(name);
      else if (err instanceof ApiError && err.details.app) upsertApp(err.details.app);
      throw err;
    } finally {
      entry.count -= 1;
      if (entry.count === 0) {
        state.snapshots.delete(name);
        for (const event of entry.queue) {
          if (state.globalQueue) state.globalQueue.push(event);
          else applyEvent(event);
        }
      }
    }
  }

  async function loadApp(name) {
    try {
      await withAppSnapshot(name, guarded(api("GET", appPath(name))));
    } catch (err) {
      if (!(err instanceof ApiError && err.code === "APP_NOT_FOUND")) showError(err);
    }
  }

  /** Fetch everything again; events arriving meanwhile are replayed afterwards. */
  async function refreshAll() {
    if (state.refreshing) {
      state.refreshAgain = true;
      return;
    }
    state.refreshing = true;
    state.globalQueue = [];
    try {
      // As many apps as are shown now, so a refresh does not fold the list back up.
      const limit = Math.min(MAX_PAGE, Math.max(PAGE, state.apps.size));
      const [apps, envs] = await guarded(Promise.all([
        api("GET", appsQuery(limit, null)),
        api("GET", "api/environments"),
      ]));
      state.apps = new Map(apps.apps.map((app) => [app.name, app]));
      tookPage(apps);
      state.envs = new Map(envs.environments.map((env) => [env.name, env]));
      renderApps();
      renderEnvs();
      renderEnvFilter();
    } catch (err) {
      showError(err);
    } finally {
      const queue = state.globalQueue || [];
      state.globalQueue = null;
      state.refreshing = false;
      for (const event of queue) onEvent(event);
      if (state.refreshAgain) {
        state.refreshAgain = false;
        refreshAll();
      }
    }
  }

  // --- applications ------------------------------------------------------------------

  /** The admin API's URL for a page of the apps that the filters let through. */
  function appsQuery(limit, cursor) {
    const params = new URLSearchParams({ limit: String(limit) });
    if (cursor) params.set("cursor", cursor);
    for (const [key, value] of Object.entries(state.view)) {
      if (value) params.set(key, value);
    }
    return "api/apps?" + params.toString();
  }

  function tookPage(page) {
    state.cursor = page.next_cursor;
    state.total = page.total;
    if (page.apps.length) state.lastName = page.apps[page.apps.length - 1].name;
  }

  async function loadMore() {
    if (!state.cursor) return;
    const button = $("apps-more");
    button.disabled = true;
    try {
      const page = await guarded(api("GET", appsQuery(PAGE, state.cursor)));
      for (const app of page.apps) state.apps.set(app.name, app);
      tookPage(page);
      renderApps();
    } catch (err) {
      showError(err);
    } finally {
      button.disabled = false;
    }
  }

  /** Whether ``app`` belongs in the list as filtered and paged now. */
  function inView(app) {
    const view = state.view;
    if (view.prefix && !app.name.startsWith(view.prefix)) return false;
    if (view.environment && !(app.environments || []).includes(view.environment)) return false;
    if (view.status && !Object.values(app.statuses || {}).includes(view.status)) return false;
    // Past the last page shown, an app waits for "Show more".
    return !(state.cursor && state.lastName !== null && app.name > state.lastName);
  }

  function upsertApp(app) {
    if (!inView(app)) {
      if (state.apps.has(app.name)) forgetApp(app.name);
      return;
    }
    if (!state.apps.has(app.name)) state.total += 1;
    state.apps.set(app.name, app);
    renderApp(app.name);
    renderCount();
  }

  function forgetApp(name) {
    if (state.apps.delete(name)) state.total = Math.max(0, state.total - 1);
    state.pending.delete(name);
    state.openEnv.delete(name);
    const row = findRow(name);
    if (row) row.remove();
    renderCount();
  }

  function filtering() {
    return Object.values(state.view).some(Boolean);
  }

  function renderCount() {
    const shown = state.apps.size;
    $("apps-empty").hidden = shown > 0 || filtering();
    $("apps-none-match").hidden = shown > 0 || !filtering();
    $("apps-more").hidden = !state.cursor;
    $("apps-count").textContent = shown
      ? (shown < state.total ? shown + " of " + state.total : String(shown)) +
        (state.total === 1 ? " application" : " applications")
      : "";
  }

  function renderStatusFilter() {
    const select = $("filter-status");
    for (const status of APP_STATUSES) {
      select.append(h("option", { value: status, text: status }));
    }
  }

  /** The environment filter offers the environments known now (and keeps its choice). */
  function renderEnvFilter() {
    const select = $("filter-env");
    const chosen = state.view.environment;
    const names = [...state.envs.keys()].sort();
    if (chosen && !names.includes(chosen)) names.push(chosen);
    select.replaceChildren(
      h("option", { value: "", text: "Any environment" }),
      ...names.map((name) => h("option", { value: name, text: name, selected: name === chosen })),
    );
  }

  /** Filters changed: show the first page of what they let through. */
  function onFilter() {
    const prefix = $("filter-prefix");
    if (!prefix.checkValidity()) return;  // the browser shows why; the API would refuse it
    clearTimeout(state.filterTimer);
    state.filterTimer = setTimeout(() => {
      state.view = {
        prefix: prefix.value,
        status: $("filter-status").value,
        environment: $("filter-env").value,
      };
      state.apps = new Map();
      state.cursor = null;
      state.lastName = null;
      refreshAll();
    }, 200);
  }

  function findRow(name) {
    for (const row of $("apps-body").rows) {
      if (row.dataset.app === name) return row;
    }
    return null;
  }

  function renderApps() {
    const names = [...state.apps.keys()].sort();
    $("apps-body").replaceChildren(...names.map((name) => appRow(state.apps.get(name))));
    renderCount();
  }

  /** Replace (or insert, in name order) the row of one app. */
  function renderApp(name) {
    const app = state.apps.get(name);
    if (!app) return;
    const row = appRow(app);
    const old = findRow(name);
    if (old) {
      // Keep the keyboard focus where it was when a live update redraws the row.
      const focused = old.contains(document.activeElement) ? document.activeElement : null;
      old.replaceWith(row);
      if (focused && focused.dataset.action) {
        const again = row.querySelector('[data-action="' + focused.dataset.action + '"]');
        if (again) again.focus();
      }
    } else {
      const next = [...$("apps-body").rows].find((r) => r.dataset.app > name);
      $("apps-body").insertBefore(row, next || null);
    }
    renderCount();
  }

  function appRow(app) {
    const envs = app.environments || [];
    const pending = state.pending.get(app.name);
    const statusCell = h("td", { class: "statuses" });
    for (const env of envs) {
      const status = (app.statuses || {})[env] || "unknown";
      const error = (app.errors || {})[env];
      statusCell.append(h(
        "div", { class: "env-status", dataset: { env } },
        envs.length > 1 ? h("span", { class: "env-name", text: env }) : null,
        badge(status),
        error ? h("div", { class: "status-error", text: error }) : null,
      ));
    }
    if (pending) statusCell.append(h("div", { class: "pending", text: pending + "…" }));

    return h(
      "tr", { dataset: { app: app.name } },
      h("td", { class: "name" }, h("code", { text: app.name }),
        (app.domains || []).length
          ? h("div", { class: "hint domains", text: app.domains.join(", ") }) : null),
      h("td", { class: "title", text: app.title }),
      h("td", { class: "envs", text: envs.join(", ") }),
      statusCell,
      h("td", { class: "desired", text: app.desired_state }),
      lastSeenCell(app),
      h("td", { class: "actions" },
        h("button", {
          type: "button", text: "Start", dataset: { action: "start" },
          disabled: Boolean(pending), onclick: () => act(app.name, "start"),
        }),
        h("button", {
          type: "button", text: "Stop", dataset: { action: "stop" },
          disabled: Boolean(pending), onclick: () => act(app.name, "stop"),
        }),
        h("button", {
          type: "button", text: "Move", dataset: { action: "move" },
          disabled: Boolean(pending), onclick: () => openMove(app.name),
        }),
        openControl(app),
        h("button", {
          type: "button", class: "danger-text", text: "Remove", dataset: { action: "remove" },
          disabled: Boolean(pending), onclick: () => openRemove(app.name),
        }),
      ),
    );
  }

  /** The Open link; an app on several environments gets a picker (the proxy's ?__env=). */
  function openControl(app) {
    const envs = app.environments || [];
    const base = "apps/" + encodeURIComponent(app.name) + "/admin";
    const link = h("a", {
      class: "button-link", target: "_blank", rel: "noopener", text: "Open",
      dataset: { action: "open" }, href: base,
    });
    if (envs.length <= 1) return link;
    let chosen = state.openEnv.get(app.name);
    if (!envs.includes(chosen)) chosen = envs[0];
    link.href = base + "?__env=" + encodeURIComponent(chosen);
    const picker = h("select", {
      class: "env-picker", "aria-label": "Environment to open " + app.name + " in",
      dataset: { action: "open-env" },
      onchange: (event) => {
        state.openEnv.set(app.name, event.target.value);
        link.href = base + "?__env=" + encodeURIComponent(event.target.value);
      },
    }, envs.map((env) => h("option", { value: env, selected: env === chosen, text: env })));
    return h("span", { class: "open-group" }, picker, link);
  }

  async function act(name, verb) {
    state.pending.set(name, verb === "start" ? "starting" : "stopping");
    renderApp(name);
    try {
      await withAppSnapshot(name, guarded(api("POST", appPath(name) + "/" + verb)));
    } catch (err) {
      showError(err);
    } finally {
      state.pending.delete(name);
      renderApp(name);
    }
  }

  // --- create dialog -----------------------------------------------------------------

  async function openCreate() {
    const form = $("create-form");
    form.reset();
    $("create-error").textContent = "";
    $("create-name-echo").textContent = "name";
    const list = $("create-envs-list");
    list.replaceChildren(h("span", { class: "hint", text: "loading environments…" }));
    $("create-dialog").showModal();
    const templates = $("create-template");
    templates.replaceChildren(h("option", { value: "", text: "Default" }));
    let envs;
    let listed;
    try {
      [envs, listed] = await guarded(Promise.all([
        api("GET", "api/environments").then((data) => data.environments),
        api("GET", "api/templates"),
      ]));
    } catch (err) {
      list.replaceChildren();
      $("create-error").textContent = describe(err);
      return;
    }
    templates.replaceChildren(
      h("option", { value: "", text: `Default (${listed.default || "none"})` }),
      ...listed.templates.map((t) => h("option", {
        value: t.name,
        text: t.description ? `${t.name}: ${t.description}` : t.name,
      })),
    );
    for (const env of envs) state.envs.set(env.name, env);
    renderEnvs();
    const online = envs.filter((env) => env.status === "online");
    list.replaceChildren(...envs.map((env) => h(
      "label", { class: "check" },
      h("input", {
        type: "checkbox", name: "environments", value: env.name,
        checked: online.length === 1 && online[0] === env,
      }),
      " " + env.name + " ",
      badge(env.status),
    )));
    if (!envs.length) list.append(h("span", { class: "hint", text: "no environment is registered" }));
  }

  async function onCreate(event) {
    event.preventDefault();
    const form = $("create-form");
    const name = $("create-name").value.trim();
    const title = $("create-app-title").value.trim();
    const environments = [...form.querySelectorAll("input[name=environments]:checked")]
      .map((input) => input.value);
    const body = { name, options: { startMode: $("create-start-mode").value } };
    if (title) body.title = title;
    const domains = $("create-domains").value.split(/[\s,]+/).filter(Boolean);
    if (domains.length) body.domains = domains;
    if (environments.length) body.environments = environments;
    const template = $("create-template").value;
    if (template) body.template = template;
    $("create-error").textContent = "";
    $("create-submit").disabled = true;
    try {
      await withAppSnapshot(name, guarded(api("POST", "api/apps", body)));
      $("create-dialog").close();
    } catch (err) {
      $("create-error").textContent = describe(err);
      const field = err instanceof ApiError ? err.details.field : null;
      const input = {
        name: "create-name", title: "create-app-title", domains: "create-domains",
        template: "create-template",
      }[field];
      if (input) $(input).focus();
    } finally {
      $("create-submit").disabled = false;
    }
  }

  // --- move dialog -------------------------------------------------------------------

  async function openMove(name) {
    const app = state.apps.get(name);
    const from = (app && app.environments) || [];
    state.moving = name;
    $("move-name").textContent = name;
    $("move-from").textContent = from.join(", ");
    $("move-error").textContent = "";
    const select = $("move-to");
    select.replaceChildren();
    $("move-submit").disabled = true;
    $("move-dialog").showModal();
    let envs;
    try {
      envs = (await guarded(api("GET", "api/environments"))).environments;
    } catch (err) {
      $("move-error").textContent = describe(err);
      return;
    }
    for (const env of envs) state.envs.set(env.name, env);
    renderEnvs();
    // where it can go: an online environment it is not only on already
    const targets = envs.filter(
      (env) => env.status === "online" && !(from.length === 1 && from[0] === env.name));
    select.replaceChildren(...targets.map((env) => h("option", { value: env.name, text: env.name })));
    if (targets.length) $("move-submit").disabled = false;
    else $("move-error").textContent = "No other environment is online to move it to.";
  }

  async function onMove(event) {
    event.preventDefault();
    const name = state.moving;
    const to = $("move-to").value;
    if (!name || !to) return;
    $("move-submit").disabled = true;
    $("move-error").textContent = "";
    state.pending.set(name, "moving");
    renderApp(name);
    try {
      await withAppSnapshot(name, guarded(api("POST", appPath(name) + "/move", { to })));
      $("move-dialog").close();
    } catch (err) {
      $("move-error").textContent = describe(err);
    } finally {
      $("move-submit").disabled = false;
      state.pending.delete(name);
      renderApp(name);
    }
  }

  // --- remove dialog -----------------------------------------------------------------

  function openRemove(name) {
    state.removing = name;
    $("remove-name").textContent = name;
    $("remove-drop").checked = false;
    $("remove-error").textContent = "";
    $("remove-dialog").showModal();
  }

  async function onRemove(event) {
    event.preventDefault();
    const name = state.removing;
    if (!name) return;
    const drop = $("remove-drop").checked;
    $("remove-submit").disabled = true;
    state.pending.set(name, "removing");
    renderApp(name);
    try {
      await guarded(api("DELETE", appPath(name) + (drop ? "?drop_database=true" : "")));
      forgetApp(name);
      $("remove-dialog").close();
    } catch (err) {
      $("remove-error").textContent = describe(err);
    } finally {
      $("remove-submit").disabled = false;
      if (state.pending.get(name) === "removing") state.pending.delete(name);
      renderApp(name);
    }
  }

  // --- environments ------------------------------------------------------------------

  function renderEnvs() {
    const names = [...state.envs.keys()].sort();
    $("envs-body").replaceChildren(...names.map((name) => {
      const env = state.envs.get(name);
      const instances = env.instances || [];
      const proxy = env.proxy_url && env.proxy_url !== env.url
        ? h("div", { class: "hint", text: "proxied via " + env.proxy_url }) : null;
      return h(
        "tr", { dataset: { env: name } },
        h("td", { class: "name" }, h("code", { text: name })),
        h("td", { class: "version", text: env.version || "" }),
        h("td", { class: "url" }, env.url || h("span", { class: "hint", text: "this process" }), proxy),
        h("td", { class: "status" }, badge(env.status)),
        h("td", { class: "instances", title: instances.join("\n") }, String(instances.length)),
        h("td", {
          class: "heartbeat", title: env.last_heartbeat_at || "",
          dataset: { at: env.last_heartbeat_at || "" },
          text: relativeTime(env.last_heartbeat_at),
        }),
        h("td", { class: "actions" }, env.url ? h("button", {
          type: "button", class: "danger-text", text: "Remove", dataset: { action: "remove" },
          onclick: () => removeEnv(name),
        }) : null),
      );
    }));
    $("envs-empty").hidden = names.length > 0;
  }

  /** Forget an environment; one online or hosting apps needs a second yes (force). */
  async function removeEnv(name) {
    if (!window.confirm(`Remove environment ${name}?`)) return;
    const path = "api/environments/" + encodeURIComponent(name);
    try {
      try {
        await guarded(api("DELETE", path));
      } catch (err) {
        if (!(err instanceof ApiError) || err.code !== "ENVIRONMENT_IN_USE") throw err;
        if (!window.confirm(err.message + "\n\nRemove it anyway?")) return;
        await guarded(api("DELETE", path + "?force=true"));
      }
      state.envs.delete(name);
      renderEnvs();
    } catch (err) {
      showError(err);
    }
  }

  /** When the app last served a request, in any of its environments (the API's
   * last_seen_at, which workers flush with their heartbeats). */
  function lastSeenCell(app) {
    const seen = Object.values(app.last_seen_at || {}).filter(Boolean).sort();
    const latest = seen.length ? seen[seen.length - 1] : "";
    return h("td", {
      class: "last-seen", title: latest, dataset: { at: latest },
      text: relativeTime(latest),
    });
  }

  function tickHeartbeats() {
    for (const cell of document.querySelectorAll("#envs-body td.heartbeat, #apps-body td.last-seen")) {
      cell.textContent = relativeTime(cell.dataset.at);
    }
  }

  // --- start -------------------------------------------------------------------------

  function wireDialog(dialog) {
    dialog.querySelector(".cancel").addEventListener("click", () => dialog.close());
  }

  async function start() {
    $("login-form").addEventListener("submit", onLogin);
    $("logout").addEventListener("click", onLogout);
    for (const tab of document.querySelectorAll("[role=tab]")) {
      tab.addEventListener("click", () => selectTab(tab.dataset.tab));
    }
    for (const button of document.querySelectorAll(".refresh")) {
      button.addEventListener("click", () => refreshAll());
    }
    $("new-app").addEventListener("click", openCreate);
    renderStatusFilter();
    $("filter-prefix").addEventListener("input", onFilter);
    $("filter-status").addEventListener("change", onFilter);
    $("filter-env").addEventListener("change", onFilter);
    $("apps-filter").addEventListener("submit", (event) => event.preventDefault());
    $("apps-more").addEventListener("click", loadMore);
    $("create-form").addEventListener("submit", onCreate);
    $("create-name").addEventListener("input", (event) => {
      $("create-name-echo").textContent = event.target.value || "name";
    });
    $("remove-form").addEventListener("submit", onRemove);
    $("move-form").addEventListener("submit", onMove);
    wireDialog($("move-dialog"));
    wireDialog($("create-dialog"));
    wireDialog($("remove-dialog"));
    window.addEventListener("hashchange", () => {
      if (!$("main-view").hidden) {
        selectTab(location.hash === "#environments" ? "environments" : "applications");
      }
    });
    setInterval(tickHeartbeats, 5000);

    // Signed in already (the cookie)? The API says.
    try {
      await api("GET", "api/environments");
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        showLogin("");
        return;
      }
      showError(err);
    }
    showMain();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
