package daemon

import (
	"context"
	"iter"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/lease"
)

// startRunner starts the backend's own peer work (backend.PeerRunner:
// the extension backend's commands), if it has any, under go.
func (d *daemon) startRunner(ctx context.Context, self lease.Lease, goFn func(func() error)) {
	r, ok := d.backend.(backend.PeerRunner)
	if !ok {
		return
	}
	d.runnerPeers = make(chan iter.Seq[lease.Lease], 1)
	goFn(func() error {
		err := r.Serve(ctx, self, d.runnerPeers)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	})
}

// feedRunner hands the runner the accepted peers, replacing a set it has
// not taken yet: the peers are a snapshot, O(1) to take, and only the
// newest matters.
func (d *daemon) feedRunner() {
	if d.runnerPeers == nil {
		return
	}
	snap := d.peers.Snapshot()
	seq := func(yield func(lease.Lease) bool) {
		for _, p := range snap.All() {
			if !yield(p.lease()) {
				return
			}
		}
	}
	select {
	case <-d.runnerPeers:
	default:
	}
	d.runnerPeers <- seq
}
