package testbed

// PostmasterPID is the PID of the cluster's postmaster.
func (p *Postgres) PostmasterPID() int { return p.postmaster }
