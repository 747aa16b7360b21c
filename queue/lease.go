package queue

import "time"

// Lease is a node's claim on an envelope: until Expires, no other node can
// claim or update the envelope. Token grows with every claim of the
// envelope, so a lease that was lost and taken over is told from the new
// one.
type Lease struct {
	ID      EvpID
	Holder  string
	Token   uint64
	Expires time.Time
}
