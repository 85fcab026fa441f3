// flakeport's pages work without this script; with it, running builds'
// logs follow live (server-sent events) and builds that start after the
// page loaded appear. Text is only ever inserted as text, never as HTML.
"use strict";

function follow(pre) {
  const id = pre.dataset.log;
  const source = new EventSource(`/builds/${id}/log?from=${pre.dataset.next}`);
  source.addEventListener("line", (e) => {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(e.data + "\n");
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("end", (e) => {
    source.close();
    delete pre.dataset.log;
    const status = document.getElementById(`status-${id}`);
    if (status) {
      status.textContent = e.data;
      status.className = e.data.startsWith("built") ? "ok" : "failed";
    }
  });
}

function element(tag, text, attrs) {
  const el = document.createElement(tag);
  if (text !== undefined) el.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function watchBuilds(running) {
  const source = new EventSource("/builds/events");
  source.addEventListener("started", (e) => {
    const b = JSON.parse(e.data);
    if (document.getElementById(`build-${b.id}`)) return;
    const empty = running.querySelector(".empty");
    if (empty) empty.textContent = "";
    const article = element("article", undefined, { class: "build", id: `build-${b.id}` });
    const h3 = element("h3");
    const link = element("a", `${b.name}:${b.tag}`, { href: `/images/${b.name}` });
    h3.append(link, " ", element("span", b.system, { class: "muted" }), " ",
      element("span", "running", { class: "running", id: `status-${b.id}` }));
    const pre = element("pre", undefined, { class: "log", "data-log": b.id, "data-next": "0" });
    article.append(h3, pre);
    running.append(article);
    follow(pre);
  });
  source.addEventListener("lagged", () => location.reload());
}

document.querySelectorAll("pre[data-log]").forEach(follow);
const running = document.getElementById("running");
if (running) watchBuilds(running);
