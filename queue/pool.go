package queue

import (
	"context"
	"sync"
	"time"
)

// pool keeps message IDs reserved ahead of Begin.
type pool struct {
	mu      sync.Mutex
	txs     []*Tx
	wake    chan struct{}
	base    context.Context // the first Begin's values, without its cancellation
	cancel  context.CancelFunc
	stopped bool
}

// fromPool returns a reserved transaction, or nil if none is ready. The
// first call starts the background filler, bound to ctx's values but not
// to its cancellation; Close stops it.
func (s *Store) fromPool(ctx context.Context) *Tx {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	if s.pool == nil {
		base := context.WithoutCancel(ctx)
		fctx, cancel := context.WithCancel(base)
		s.pool = &pool{wake: make(chan struct{}, 1), base: base, cancel: cancel}
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			s.fill(fctx)
		}()
	}
	p := s.pool
	s.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	maxAge := s.opts.Grace / 4
	for len(p.txs) > 0 {
		tx := p.txs[0]
		p.txs = p.txs[1:]
		if s.now().Sub(tx.res.Created) < maxAge {
			return tx
		}
		s.background(ctx, func(ctx context.Context) { tx.Rollback(ctx) })
	}
	return nil
}

// fill keeps the pool at Options.Prealloc reservations until stopped.
func (s *Store) fill(ctx context.Context) {
	p := s.pool
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		p.mu.Lock()
		need := s.opts.Prealloc - len(p.txs)
		p.mu.Unlock()
		if need <= 0 {
			select {
			case <-ctx.Done():
			case <-p.wake:
			case <-time.After(s.opts.Grace / 8):
				// Wake up to replace reservations that grow old.
				p.mu.Lock()
				if len(p.txs) > 0 && s.now().Sub(p.txs[0].res.Created) >= s.opts.Grace/4 {
					old := p.txs[0]
					p.txs = p.txs[1:]
					p.mu.Unlock()
					old.Rollback(ctx)
					continue
				}
				p.mu.Unlock()
			}
			continue
		}
		// Not cancelled by stop: a reservation in flight completes, and
		// is released below, rather than landing after its release.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		tx, err := s.reserve(rctx)
		cancel()
		if err != nil {
			// The store is down: try again later, without spinning.
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		p.mu.Lock()
		if p.stopped {
			p.mu.Unlock()
			cctx, cancel := context.WithTimeout(p.base, 10*time.Second)
			tx.Rollback(cctx)
			cancel()
			return
		}
		p.txs = append(p.txs, tx)
		p.mu.Unlock()
	}
}

// stop ends the filler and releases the unused reservations.
func (p *pool) stop() {
	p.mu.Lock()
	p.stopped = true
	txs := p.txs
	p.txs = nil
	p.mu.Unlock()
	p.cancel()
	for _, tx := range txs {
		ctx, cancel := context.WithTimeout(p.base, 10*time.Second)
		tx.Rollback(ctx)
		cancel()
	}
}
