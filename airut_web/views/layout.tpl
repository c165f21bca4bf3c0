<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>{{title}}</title>
<link rel="stylesheet" href="/static/app.css">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<script src="/static/app.js" defer></script>
</head>
<body>
<header class="top">
  <a class="brand" href="/">airut</a>
  <nav>
    <a href="/">Overview</a>
    % for r in repos:
    <a href="/repo/{{r}}">{{r}}</a>
    % end
  </nav>
  <span class="livestate" id="livestate" hidden></span>
</header>
{{!base}}
<footer><a href="/api/health">/api/health</a> · <a href="/api/tasks">/api/tasks</a></footer>
</body>
</html>
