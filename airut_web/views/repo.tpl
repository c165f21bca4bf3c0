% if not fragment:
% rebase('layout', title=title)
% end
% repo = r["repo"]
<main data-live="on">
<section class="head">
  <h1>Repository {{r["id"]}}</h1>
  <dl class="facts">
    <dt>Model</dt><dd>{{repo.model}}</dd>
    <dt>Network sandbox</dt><dd>{{"on" if repo.network.sandbox else "OFF"}}</dd>
    <dt>Limits</dt><dd>{{size(repo.resource_limits.memory)}} · {{number(repo.resource_limits.cpus)}} CPUs · {{duration(repo.resource_limits.timeout)}}</dd>
    % img = r["image"]
    <dt>Image</dt><dd><code>{{img.image if img else "-"}}</code>
    % if img and img.image_created:
    built {{!epoch(img.image_created)}}
    % end
    </dd>
  </dl>
</section>
<section>
  <h2>Channels</h2>
  <table>
  % for kind, shown in (("email", repo.email.address if repo.email else ""), ("slack", "Slack app (Socket Mode)")):
  % if getattr(repo, kind):
  <tr><td>{{kind}}</td><td>{{shown}}</td>
  % units = [u for u in r["units"] if u.name.startswith(f"airut-{kind}@")]
  <td>
  % for u in units:
  <span class="badge {{'bad' if u.failed else 'ok' if u.active == 'active' else 'muted'}}">{{u.active}}</span> {{short(u.status, 120)}}
  % end
  % if not units:
  <span class="badge muted">not loaded</span>
  % end
  </td></tr>
  % end
  % end
  <tr><td>local</td><td>airut submit</td><td></td></tr>
  </table>
</section>
% if r["failed"]:
<section class="health degraded"><h2>Set aside</h2><ul>
% for stage, n in r["failed"].items():
<li>{{n}} record(s) in {{stage}}</li>
% end
</ul></section>
% end
<section>
  <h2>Now</h2>
  % include('tasks_table', rows=r["waiting"], followups={}, time_label="Since", empty="Nothing is queued or running.")
</section>
<section>
  <h2>Last errors</h2>
  % include('tasks_table', rows=r["errors"], followups={}, time_label="Finished", empty="No errors.")
</section>
<section>
  <h2>Recent tasks</h2>
  % include('tasks_table', rows=r["tasks"], followups={}, time_label="Finished", empty="No task has finished yet.")
</section>
</main>
