"""kdcache trainer: streams shards, replays planned views, joins cached teacher targets, trains students."""
