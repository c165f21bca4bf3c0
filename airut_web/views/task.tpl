% if not fragment:
% rebase('layout', title=title)
% end
% v = view
% t = v.line
% s = v.summary
<main data-live="{{'on' if live else 'off'}}">
<section class="head">
  <h1>Task <code>{{t.task}}</code> {{!badge(t.outcome)}}</h1>
  % if v.stoppable:
  <button class="stop" type="button" data-task="{{t.task}}">Stop</button>
  <span class="stopmsg" role="status"></span>
  % end
  <dl class="facts">
    <dt>Repository</dt><dd><a href="/repo/{{t.repo}}">{{t.repo}}</a></dd>
    % if t.conversation:
    <dt>Conversation</dt><dd><a href="/conversation/{{t.conversation}}">{{t.conversation}}</a></dd>
    % end
    <dt>Sender</dt><dd class="sender">{{t.sender}}</dd>
    <dt>Channel</dt><dd>{{t.channel or "-"}}</dd>
    <dt>Unit</dt><dd><code>{{t.unit or (s.unit if s else None) or "-"}}</code></dd>
    <dt>Started</dt><dd>{{!when(t.started or (s.started if s else None))}}</dd>
    % if s:
    <dt>Finished</dt><dd>{{!when(s.time)}}</dd>
    <dt>Took</dt><dd>{{duration(t.duration_s)}}</dd>
    <dt>Cost</dt><dd>{{money(s.cost_usd)}}</dd>
    <dt>Turns</dt><dd>{{number(s.turns)}}</dd>
    <dt>Tokens</dt><dd>{{number(s.usage.get("input_tokens"))}} in · {{number(s.usage.get("output_tokens"))}} out</dd>
    <dt>Image</dt><dd><code>{{s.image or "-"}}</code></dd>
    % elif t.outcome in WAITING and t.outcome != "queued":
    <dt>Running for</dt><dd>{{!age(t.started or t.time)}}</dd>
    % end
    % if v.conversation:
    <dt>Model</dt><dd>{{v.conversation.model}}{{(" · effort " + v.conversation.effort) if v.conversation.effort else ""}}</dd>
    % end
  </dl>
</section>
<section>
  <h2>Message</h2>
  <pre class="text">{{v.text or "(not kept)"}}</pre>
</section>
<section>
  <h2>Resources</h2>
  <div class="resources">
  <dl class="facts">
    <dt>Memory limit</dt><dd>{{size(v.limits.get("memory"))}}</dd>
    <dt>CPUs</dt><dd>{{number(v.limits.get("cpus"))}}</dd>
    <dt>Timeout</dt><dd>{{duration(v.limits.get("timeout"))}}</dd>
    <dt>Processes</dt><dd>{{number(v.limits.get("pids_limit"))}}</dd>
    % if v.live:
    <dt>Memory now</dt><dd class="live-mem">{{size(v.live.memory)}}</dd>
    <dt>CPU used</dt><dd>{{duration(v.live.cpu_usec / 1e6 if v.live.cpu_usec is not None else None)}}</dd>
    % end
    <dt>Samples</dt><dd class="samples">{{len(v.samples)}}</dd>
  </dl>
  <figure><figcaption>Memory</figcaption>{{!charts["memory"]}}</figure>
  <figure><figcaption>CPU</figcaption>{{!charts["cpu"]}}</figure>
  </div>
</section>
% if v.timeline.todos:
<section>
  <h2>Plan</h2>
  <ul class="todos">
  % for todo in v.timeline.todos:
    <li class="todo-{{todo['status']}}">{{todo["content"]}}</li>
  % end
  </ul>
</section>
% end
<section>
  <h2>Actions <span class="count">{{len(v.timeline.items)}}</span></h2>
  % if v.timeline.dropped or v.timeline.skipped_bytes:
  <p class="note">Showing the newest {{len(v.timeline.items)}} actions; {{v.timeline.dropped}} earlier ones and {{size(v.timeline.skipped_bytes)}} of output are not shown.</p>
  % end
  <ol class="timeline">
  % for i, item in enumerate(v.timeline.items):
    % if item.kind == "tool":
    <li class="ev tool{{' error' if item.is_error else ''}}"><details id="ev-{{item.tool_id or i}}">
      <summary><span class="tool-name">{{item.name}}</span> <code>{{short(item.detail, 160)}}</code>
      % if item.result is None:
      <span class="badge run">running</span>
      % elif item.is_error:
      <span class="badge bad">error</span>
      % end
      </summary>
      <pre class="input">{{item.facts.get("input", "")}}</pre>
      % if item.result is not None:
      <pre class="result">{{item.result}}</pre>
      % end
    </details></li>
    % elif item.kind == "text":
    <li class="ev text"><pre class="text">{{item.text}}</pre></li>
    % elif item.kind == "thinking":
    <li class="ev thinking"><details id="ev-th-{{i}}"><summary>thinking</summary><pre class="text">{{item.text}}</pre></details></li>
    % elif item.kind == "init":
    <li class="ev init">session started · model {{item.text or "?"}} · {{item.facts.get("tools")}} tools</li>
    % elif item.kind == "retry":
    <li class="ev retry">model API retry: {{item.detail}}</li>
    % elif item.kind == "result":
    <li class="ev result{{' error' if item.is_error else ''}}">
      <div class="result-head">Result{{' (error)' if item.is_error else ''}} · {{number(item.facts.get("turns"))}} turns · {{money(item.facts.get("cost_usd"))}} · {{number(item.facts.get("input_tokens"))}} in / {{number(item.facts.get("output_tokens"))}} out tokens · {{duration((item.facts.get("duration_ms") or 0) / 1000 if item.facts.get("duration_ms") is not None else None)}}</div>
      <pre class="text">{{item.text}}</pre>
    </li>
    % else:
    <li class="ev output"><pre>{{item.text}}</pre></li>
    % end
  % end
  % if not v.timeline.items:
    <li class="empty">No output yet.</li>
  % end
  </ol>
</section>
% if s and s.reply:
<section>
  <h2>Reply as sent</h2>
  <pre class="text reply">{{s.reply}}</pre>
</section>
% end
<section>
  <h2>Network <span class="count">{{len(v.network)}}</span>
  % for verdict, n in sorted(v.network_counts.items()):
  <span class="badge {{'bad' if verdict == 'BLOCKED' else 'muted'}}">{{verdict}} {{n}}</span>
  % end
  </h2>
  % if v.network_counts.get("BLOCKED"):
  <p class="note">{{hint}}</p>
  % end
  <div class="scroll"><table class="network">
  <tbody>
  % for line in v.network:
  <tr class="v-{{line.verdict}}"><td>{{!when(line.time)}}</td><td><span class="verdict">{{line.verdict}}</span></td><td class="detail"><code>{{line.detail}}</code></td></tr>
  % end
  % if not v.network:
  <tr><td class="empty">No network requests.</td></tr>
  % end
  </tbody></table></div>
</section>
</main>
