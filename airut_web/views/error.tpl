% rebase('layout', title=title)
<main data-live="off">
<section><h2>{{error.status}}</h2><p>{{error.body}}</p><p><a href="/">Overview</a></p></section>
</main>
