package runner

import "time"

// waitDelay is how long a cancelled command gets after SIGTERM before it is killed.
const waitDelay = 10 * time.Second
