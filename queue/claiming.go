package queue

import (
	"sync"
	"time"
)

// claiming is the set of envelopes that this Store's callers claimed,
// with the token of each claim and when it lapses. Workers of one process
// that read the same due envelope would otherwise race to claim it, and
// each claim lost costs the loser a swap, a pointer and the pointer's
// removal; with the set, the loser learns from memory that its read is
// older than the claim. An entry goes when its claim is released,
// deferred or lost through this Store, or fails, or once it lapses; a
// deleted envelope's stays until then, since the envelope never comes
// back, so that Due skips its pointer without a read.
//
// The set only ever refuses a claim that the store would refuse too: one
// made from a read of the envelope with a token no later than the
// entry's. A claim made from a later read (another node took the
// envelope over since, and released it) goes to the store. Due skips the
// envelopes of entries in force, which delays an envelope that another
// node took from this one and released, for this node only, until the
// entry lapses.
type claiming struct {
	mu    sync.Mutex
	m     map[EvpID]claimEntry
	prune int // the size at which the lapsed entries are dropped next
}

type claimEntry struct {
	token uint64
	until time.Time
}

// maxClaiming is the size from which the set drops the entries that
// lapsed, so that claims never ended through the Store do not pile up.
const maxClaiming = 4096

// take records the claim of id with token until expires, for a claim made
// from a read of the envelope with token read, and reports false if an
// entry in force has a token no older than read: the read predates a
// claim of this Store.
func (c *claiming) take(id EvpID, read, token uint64, now, expires time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[id]; ok && now.Before(e.until) && read < e.token {
		return false
	}
	if c.m == nil {
		c.m = make(map[EvpID]claimEntry)
	}
	if len(c.m) >= max(c.prune, maxClaiming) {
		for k, e := range c.m {
			if !now.Before(e.until) {
				delete(c.m, k)
			}
		}
		// Twice the entries in force: the cost of a sweep of the map
		// stays proportional to the entries added since the last.
		c.prune = 2 * len(c.m)
	}
	c.m[id] = claimEntry{token, expires}
	return true
}

// set moves the lapse of the entry of id, if any, to expires.
func (c *claiming) set(id EvpID, expires time.Time) {
	c.mu.Lock()
	if e, ok := c.m[id]; ok {
		e.until = expires
		c.m[id] = e
	}
	c.mu.Unlock()
}

// has reports whether an entry of id is in force.
func (c *claiming) has(id EvpID, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	return ok && now.Before(e.until)
}

// drop removes id.
func (c *claiming) drop(id EvpID) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}
