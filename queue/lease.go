package queue

import (
	"context"
	"time"
)

// Lease describes a node's claim on an envelope. A lease is held while it
// has not expired and its holder's heartbeat is alive; a node that dies
// loses its leases when its heartbeat expires, however long they were
// taken for. Token grows with every claim of the envelope, so a lost lease
// is told from the one that replaced it.
type Lease struct {
	ID      EvpID
	Holder  string
	Token   uint64
	Expires time.Time
}

// held reports whether the lease in h is held: not expired, and its
// holder's process alive.
//
// A claim is judged by its session against the holder's heartbeat, which
// may be older than the claim: cached, or read before a new process of the
// node wrote its first heartbeat. So a different session alone never
// means dead:
//   - an earlier session than the heartbeat's: a later process of the node
//     has started, so the claim's process is dead (one live process per
//     node name);
//   - the same or a later session: held while the heartbeat has not
//     expired, and a heartbeat is only ever found expired on a fresh read.
//     A live process keeps its node's heartbeat unexpired and at its own
//     session: its first heartbeat comes before its first claim, and each
//     of its heartbeats replaces an earlier session's record. The only
//     other writer, a survivor that writes back a forgotten node's
//     heartbeat (see forget), writes it unexpired for one NodeTTL. So an
//     expired heartbeat of an earlier session means that the claim's
//     process has not heartbeated for a NodeTTL;
//   - no heartbeat at all (a survivor that forgot the node removed it just
//     as a new process started, which an unconditional delete cannot rule
//     out): held until the lease expires.
func (s *Store) held(ctx context.Context, h *envHeader) (bool, error) {
	if h.Holder == "" || !s.now().Before(time.Unix(0, h.Expires)) {
		return false, nil
	}
	if own := s.session.Load(); h.Holder == s.opts.Node && own != 0 {
		switch {
		case h.Session == own:
			return true, nil
		case h.Session < own:
			return false, nil // an earlier process of this node
		}
	}
	rec, err := s.node(ctx, h.Holder)
	switch {
	case err != nil:
		return false, err
	case rec == nil:
		return true, nil
	case h.Session < rec.Session:
		return false, nil
	default:
		return s.now().Before(rec.Expires), nil
	}
}

// mine reports whether this process holds the lease in h.
func (s *Store) mine(h *envHeader) bool {
	return h.Holder == s.opts.Node && h.Session != 0 && h.Session == s.session.Load()
}
