package pgload

// DefaultConnections is the number of sessions a load uses when none is asked for: one
// per CPU of the machine, at least 2 and at most 8, and no more than half the
// connections the server still has free (free < 0: not known). Fewer than 2 means the
// serial path: one psql reading the dump, as `psql -f` does.
func DefaultConnections(cpus, free int) int {
	n := min(max(cpus, 2), 8)
	if free >= 0 {
		n = min(n, free/2)
	}
	return max(n, 1)
}

// FreeConnectionsSQL counts the connections the server still accepts from ordinary users.
const FreeConnectionsSQL = `SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')`
