% if not fragment:
% rebase('layout', title=title)
% end
<main data-live="{{'on' if live else 'off'}}">
% o = overview
% h = o.health
<section class="health {{h['status']}}">
  <h2>Health: {{h["status"]}}</h2>
  % if h["reasons"]:
  <ul>
  % for reason in h["reasons"]:
    <li>{{reason}}</li>
  % end
  </ul>
  % end
</section>
<section>
  <h2>Now <span class="count">{{len(o.waiting)}}</span></h2>
  % include('tasks_table', rows=o.waiting, followups=o.followups, time_label="Since", empty="Nothing is queued or running.")
</section>
<div class="grid">
<section>
  <h2>Units</h2>
  <div class="scroll"><table>
  <thead><tr><th>Unit</th><th>State</th><th class="num wide">Restarts</th><th>Status</th></tr></thead>
  <tbody>
  % for u in o.units:
  <tr class="{{'failed' if u.failed else ''}}">
    <td class="unit">{{u.name}}</td>
    <td><span class="badge {{'bad' if u.failed else 'ok' if u.active == 'active' else 'muted'}}">{{u.active}}</span> <span class="preview">{{u.sub}}{{'' if u.result in ('', 'success') else ' · ' + u.result}}</span></td>
    <td class="num wide">{{u.restarts}}</td>
    <td class="status">{{short(u.status, 120)}}</td>
  </tr>
  % end
  % if not o.units:
  <tr><td colspan="4" class="empty">No airut unit is loaded.</td></tr>
  % end
  </tbody></table></div>
</section>
<section>
  <h2>Spool</h2>
  <table class="depths">
  % for stage, n in o.depths.items():
  <tr class="{{'failed' if stage.startswith('failed/') and n else ''}}"><td>{{stage}}</td><td class="num">{{n}}</td></tr>
  % end
  </table>
</section>
</div>
<div class="grid">
<section><h2>Tasks per day</h2>{{!charts["tasks"]}}
<p class="legend"><span class="key bar-success"></span>success <span class="key bar-failed"></span>failed <span class="key bar-stopped"></span>stopped</p></section>
<section><h2>Model cost per day</h2>{{!charts["cost"]}}</section>
</div>
<section>
  <h2>Recent</h2>
  % include('tasks_table', rows=o.recent, followups={}, time_label="Finished", empty="No task has finished yet.")
</section>
</main>
