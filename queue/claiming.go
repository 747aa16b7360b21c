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
//
// The set also holds the envelopes that a due scan is reading to return,
// or returned, and that no caller has claimed yet, for offerTime: workers
// sharing a Store would otherwise read the same due envelopes, and all
// but one of them for nothing. An offer never refuses a claim; it only
// sends the envelope to the back of this Store's other due scans until it
// is claimed or the offer lapses.
type claiming struct {
	mu    sync.Mutex
	m     map[EvpID]claimEntry
	prune int // the size at which the lapsed entries are dropped next
}

type claimEntry struct {
	token uint64
	until time.Time
	offer bool // a due scan's: being read or returned, not claimed
}

// offerTime is how long an envelope that Due returned stays at the back
// of this Store's due scans while nobody claims it.
const offerTime = 5 * time.Second

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
	if e, ok := c.m[id]; ok && !e.offer && now.Before(e.until) && read < e.token {
		return false
	}
	c.grow(now)
	c.m[id] = claimEntry{token: token, until: expires}
	return true
}

// grow makes room for an entry, dropping the entries that lapsed once the
// set has grown enough since the last time. c.mu is held.
func (c *claiming) grow(now time.Time) {
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
}

// offer records that a due scan is reading id to return it, unless an
// entry in force already names it, and reports whether it did.
func (c *claiming) offer(id EvpID, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[id]; ok && now.Before(e.until) {
		return false
	}
	c.grow(now)
	c.m[id] = claimEntry{until: now.Add(offerTime), offer: true}
	return true
}

// unoffer removes the offer of id, if that is what the set holds of it.
func (c *claiming) unoffer(id EvpID) {
	c.mu.Lock()
	if e, ok := c.m[id]; ok && e.offer {
		delete(c.m, id)
	}
	c.mu.Unlock()
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

// has reports whether a claim of id is in force.
func (c *claiming) has(id EvpID, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	return ok && !e.offer && now.Before(e.until)
}

// offered reports whether an offer of id is in force.
func (c *claiming) offered(id EvpID, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	return ok && e.offer && now.Before(e.until)
}

// drop removes id.
func (c *claiming) drop(id EvpID) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}
