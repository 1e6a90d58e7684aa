// stepwise web UI: the only script of its pages (no framework, no build).
// - An execution page that is still running follows the execution's event
//   stream (server-sent events, signed in by the session cookie) and moves
//   each step's node and row to its new status.
// - A step panel streams the step's log (the REST API's follow mode).
// - On a plan form, ticking a step chooses "the steps ticked below".
(function () {
  'use strict';

  var ICONS = {
    Succeeded: '\u2714', Failed: '\u2716', Executing: '\u25B6', Starting: '\u25B6',
    Stopping: '\u25A0', Stopped: '\u25A0', Skipped: '\u293C', Pending: '\u25CB'
  };
  var TERMINAL = ['Succeeded', 'Failed', 'Stopped'];

  function badge(status) {
    var span = document.createElement('span');
    span.className = 'status st-' + status;
    var glyph = document.createElement('span');
    glyph.setAttribute('aria-hidden', 'true');
    glyph.textContent = (ICONS[status] || '\u2022') + ' ';
    span.appendChild(glyph);
    span.appendChild(document.createTextNode(status));
    return span;
  }

  function setStatusClass(el, status) {
    var keep = (el.getAttribute('class') || '').split(/\s+/).filter(function (c) {
      return c && c.indexOf('st-') !== 0;
    });
    keep.push('st-' + status);
    el.setAttribute('class', keep.join(' '));
  }

  function updateStep(name, status) {
    // An iteration of a ForEach body step (`FanOut[3].Score`) shows on the
    // body step's node while it runs; the finished page sums them up.
    var iteration = /^[^\[]+\[\d+\]\.(.+)$/.exec(name);
    if (iteration) {
      if (status !== 'Starting' && status !== 'Executing') return;
      name = iteration[1];
    }
    var selector = '[data-step="' + CSS.escape(name) + '"]';
    document.querySelectorAll('svg.dag ' + selector).forEach(function (node) {
      setStatusClass(node, status);
      var icon = node.querySelector('.icon');
      if (icon) icon.textContent = ICONS[status] || '\u2022';
      var detail = node.querySelector('.detail');
      if (detail) detail.textContent = status;
      node.setAttribute('aria-label', 'step ' + name + ': ' + status);
    });
    document.querySelectorAll('table.steps tr' + selector + ' .step-status').forEach(function (cell) {
      cell.replaceChildren(badge(status));
    });
  }

  function follow(execution) {
    var id = execution.dataset.id;
    var source = new EventSource('/v1/executions/' + encodeURIComponent(id) + '/events');
    source.addEventListener('step', function (e) {
      var data = JSON.parse(e.data);
      if (data.step_name) updateStep(data.step_name, data.status);
    });
    source.addEventListener('execution', function (e) {
      var data = JSON.parse(e.data);
      var cell = document.getElementById('execution-status');
      if (cell) cell.replaceChildren(badge(data.status));
      execution.dataset.status = data.status;
      if (TERMINAL.indexOf(data.status) >= 0) {
        source.close();
        execution.dataset.live = 'false';
        // The finished page shows durations, badges and the retry button.
        window.setTimeout(function () { window.location.reload(); }, 300);
      }
    });
    source.addEventListener('shutdown', function () { source.close(); });
  }

  function followLog(pre) {
    var url = pre.dataset.logUrl;
    var received = 0;
    var decoder = new TextDecoder();
    function append(text) { pre.textContent += text; }
    function again() {
      // The stream ends when the attempt ends (or after the server's
      // longest wait): ask again from where it stopped while the step runs.
      var stepUrl = url.replace(/\/logs\?.*$/, '');
      fetch(stepUrl, { credentials: 'same-origin' }).then(function (r) { return r.json(); }).then(function (step) {
        if (['Pending', 'Starting', 'Executing', 'Stopping'].indexOf(step.status) >= 0) {
          window.setTimeout(read, 500);
        } else {
          pre.dataset.done = 'true';
          if (!pre.textContent) pre.textContent = '(the log is empty)';
        }
      }).catch(function () { pre.dataset.done = 'true'; });
    }
    function read() {
      fetch(url + '&offset=' + received, { credentials: 'same-origin' }).then(function (response) {
        if (!response.ok) {
          return response.json().then(function (body) {
            pre.textContent = (body.error && body.error.message) || ('HTTP ' + response.status);
            pre.dataset.done = 'true';
          });
        }
        var reader = response.body.getReader();
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) { append(decoder.decode()); again(); return; }
            received += chunk.value.length;
            append(decoder.decode(chunk.value, { stream: true }));
            return pump();
          });
        }
        return pump();
      }).catch(function () { pre.dataset.done = 'true'; });
    }
    read();
  }

  document.addEventListener('DOMContentLoaded', function () {
    var execution = document.getElementById('execution');
    if (execution && execution.dataset.live === 'true' && window.EventSource) follow(execution);
    var log = document.getElementById('log');
    if (log && window.fetch) followLog(log);
    var panel = document.getElementById('panel');
    if (panel && window.location.hash === '#panel') panel.focus();
    var pickSteps = document.getElementById('mode-steps');
    document.querySelectorAll('.step-picks input[type=checkbox]').forEach(function (box) {
      box.addEventListener('change', function () { if (box.checked && pickSteps) pickSteps.checked = true; });
    });
  });
})();
