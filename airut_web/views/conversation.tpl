% if not fragment:
% rebase('layout', title=title)
% end
% c = conv
<main data-live="on">
<section class="head">
  <h1>Conversation <code>{{c.conversation_id}}</code></h1>
  <dl class="facts">
    <dt>Repository</dt><dd><a href="/repo/{{c.repo}}">{{c.repo}}</a></dd>
    <dt>Model</dt><dd>{{c.model}}{{(" · effort " + c.effort) if c.effort else ""}}</dd>
    <dt>Started</dt><dd>{{!when(c.created)}}</dd>
    <dt>Tasks</dt><dd>{{len(c.replies)}}</dd>
    <dt>Cost</dt><dd>{{money(sum(r.cost_usd or 0 for r in c.replies))}}</dd>
  </dl>
</section>
<section>
<ol class="conversation">
% for r in c.replies:
  <li>
    <div class="turn-head"><a href="/task/{{r.task_id}}">{{r.task_id}}</a> {{!badge(r.outcome)}} · {{!when(r.time)}} · {{duration(r.duration_ms / 1000 if r.duration_ms else None)}} · {{money(r.cost_usd)}} · {{number(r.turns)}} turns · <span class="sender">{{r.sender or "-"}}</span></div>
    % if r.request:
    <pre class="text request">{{r.request}}</pre>
    % end
    % if r.reply:
    <pre class="text reply">{{r.reply}}</pre>
    % end
  </li>
% end
% for t in waiting:
  <li><div class="turn-head"><a href="/task/{{t.task}}">{{t.task}}</a> {{!badge(t.outcome)}} · {{!when(t.time)}} · <span class="sender">{{t.sender}}</span></div>
  <pre class="text request">{{t.text or ""}}</pre></li>
% end
</ol>
</section>
</main>
