% # rows: TaskLine; columns: which to show
<div class="scroll"><table class="tasks">
<thead><tr><th>Task</th><th>State</th><th class="wide">Repository</th><th class="wide">Sender</th><th class="wide">Channel</th><th>{{time_label}}</th><th class="num wide">Took</th><th class="num">Cost</th></tr></thead>
<tbody>
% for t in rows:
<tr class="o-{{t.outcome}}">
  <td><a href="/task/{{t.task}}">{{t.task}}</a>
  % if t.text:
  <div class="preview">{{short(t.text, 140)}}</div>
  % end
  % for f in followups.get(t.task, []) if followups else []:
  <div class="followup">+ follow-up <a href="/task/{{f}}">{{f}}</a></div>
  % end
  % if t.merged:
  <div class="followup">answers also {{", ".join(t.merged)}}</div>
  % end
  </td>
  <td>{{!badge(t.outcome)}}</td>
  <td class="wide"><a href="/repo/{{t.repo}}">{{t.repo}}</a></td>
  <td class="sender wide">{{short(t.sender, 60)}}</td>
  <td class="wide">{{t.channel or "-"}}</td>
  % if t.outcome in WAITING:
  <td>{{!when(t.started or t.time)}}<div class="preview">{{!age(t.started or t.time)}}</div></td>
  % else:
  <td>{{!when(t.time)}}</td>
  % end
  <td class="num wide">{{duration(t.duration_s)}}</td>
  <td class="num">{{money(t.cost_usd)}}</td>
</tr>
% end
% if not rows:
<tr><td colspan="8" class="empty">{{empty}}</td></tr>
% end
</tbody></table></div>
