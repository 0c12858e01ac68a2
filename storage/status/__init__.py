"""Aggregate reads for the status page: queue load and the last hour of work.

Owns `StatusQueries` (`queries`: waiting and running work per queue, which reveals no one's work) and
`ActivityQueries` (`activity`: finished jobs in time buckets, failing webhook endpoints). Read-only; it knows
nothing of HTML, charts or HTTP.
"""
