"""Stats, tags and campaigns: the numbers a sender watches (mailgun-api.md §9-§11).

Owner of stats_counters, stats_uniques, tags, tag_aggregates, campaigns and campaign_events.
The counts are written by `counting.statements`, which mta.events adds to every INSERT of
events (same transaction); everything else here reads them or manages tags and campaigns.
"""
