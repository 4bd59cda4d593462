package daemon

// Peers: lease events folded into the peer map and the desired state.

import (
	"errors"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/desired"
	"github.com/weft-net/weft/internal/lease"
)

// releaseStartupMemory hands back to the system what the start used and
// no longer needs. The start reads the whole store twice (Acquire's
// listing, then the watch's snapshot); among a cluster's worth of leases,
// or junk in the store (the bad-input flood: ~30 MiB of oversized values
// left the daemon at 180 MiB), that is garbage right after the first
// pass, which the GC, with nothing allocating any more, would only collect
// at its two-minute forced cycle and the scavenger return later still.
// One forced collection now costs a few milliseconds, once.
func releaseStartupMemory() { runtime.GC(); debug.FreeOSMemory() }

// newDesired starts the desired state over from our own objects, with
// room for about peers peers. Our own subnets are fixed for the daemon's
// lifetime (a renewal only moves revision and expiry), so the base is the
// same every time.
func (d *daemon) newDesired(peers int) {
	if d.base == nil {
		d.base = d.backend.PlanBase(d.self)
		if d.opts.IPBlackholeRoute {
			d.fallback = d.blackholes()
		}
	}
	d.desired = desired.New(d.base, peers)
	d.desired.SetFallback(d.fallback, nil)
}

// delta is where apply records touched keys: nowhere when the pending
// pass diffs them all anyway.
func (d *daemon) delta() *dataplane.Delta {
	if d.untracked {
		return nil
	}
	return d.touched
}

// touchedMin is the fewest touched keys capTouched lets go of.
const touchedMin = 4096

// capTouched stops recording touched keys once they are more than a
// quarter of the desired keys (and touchedMin): the pending pass then
// diffs every key (passDiff), which costs a lookup per key where a delta
// pass costs one per touched key, so at most four times as many, while
// the touched set of a burst (20,000 joins or leaves: 60,000 keys, ~4 MB
// of maps) is never held.
func (d *daemon) capTouched() {
	if d.untracked || d.touched.Len() <= touchedMin {
		return
	}
	w := d.desired
	keys := w.WantedRoutes().Len() + w.WantedNeighs().Len() + w.WantedFDB().Len() + w.WantedWGPeers().Len() + w.WantedUDPPeers().Len()
	if d.touched.Len() > keys/4 {
		d.untracked = true
		d.touched.Reset()
	}
}

// apply folds a batch of lease events into the peer map.
func (d *daemon) apply(b lease.Batch) error {
	if b.Snapshot && d.peers.Len() == 0 && d.desired.Peers() == 0 && len(b.Events) > cap0 {
		// The first snapshot of a big cluster: make the maps its size
		// once. Growing them a rehash at a time was half the CPU time of
		// applying 5,000 leases.
		d.newDesired(len(b.Events))
	}
	if b.Snapshot {
		// A snapshot replaces everything: peers not in it are gone.
		seen := make(map[lease.ID]bool, len(b.Events))
		for _, ev := range b.Events {
			if ev.Err == nil || !errors.Is(ev.Err, lease.ErrBadKey) {
				seen[ev.Lease.ID()] = true
			}
		}
		var gone []lease.ID
		for _, p := range d.peers.All() {
			if !seen[p.id] {
				gone = append(gone, p.id)
			}
		}
		for _, id := range gone {
			d.dropPeer(id)
		}
		removed := len(gone)
		d.skipped.retain(d.skipped.keys(b.Events))
		if _, ok := seen[d.self.ID()]; !ok {
			// After a lapse, until the keeper has reclaimed it.
			if err := d.ownGone(b.Revision, "is not in the store"); err != nil {
				return err
			}
		}
		d.log.Debug("lease snapshot", "leases", len(b.Events), "removed", removed, "revision", b.Revision)
	}
	for _, ev := range b.Events {
		if err := d.applyEvent(ev); err != nil {
			return err
		}
		d.capTouched()
	}
	for reason, n := range d.skipped.takeChanged() {
		d.cfg.Metrics.SetSkipped(reason, n)
	}
	return nil
}

func (d *daemon) applyEvent(ev lease.Event) error {
	if ev.Err != nil && errors.Is(ev.Err, lease.ErrBadKey) {
		// A key that is not a lease's names no subnets: whatever it says,
		// it concerns no peer (and not us).
		if ev.Type == lease.Removed {
			d.skipped.remove(ev.Key)
		} else {
			d.skip(ev, ev.Err)
		}
		return nil
	}
	id := ev.Lease.ID()
	if id == d.self.ID() {
		return d.ownEvent(ev)
	}
	if ev.Type == lease.Removed {
		if d.dropPeer(id) {
			d.log.Debug("peer removed", "lease", id)
		}
		d.skipped.remove(ev.Key)
		return nil
	}
	err := ev.Err
	var objs dataplane.Objects
	if err == nil {
		objs, err = d.backend.Peer(d.self, ev.Lease)
	}
	if err != nil {
		d.dropPeer(id)
		d.skip(ev, err)
		return nil
	}
	d.skipped.remove(ev.Key)
	d.log.Debug("peer added", "lease", id, "public_ip", ev.Lease.Attrs.PublicIP)
	attrs := ev.Lease.Attrs
	if t := d.backend.Type(); attrs.BackendType == t {
		attrs.BackendType = t // one string for all peers, not one each
	}
	// A new record each time: snapshots share the old one. The desired
	// state holds the record's ID rather than a copy.
	rec := &peer{id: id, attrs: attrs, seen: time.Now().UnixNano(), reservation: ev.Lease.Reservation}
	h, ok := d.desired.Handle(id)
	if ok {
		if old := d.peers.Get(h); old.attrs.Equal(attrs) {
			rec.seen = old.seen
		}
		d.desired.UpdatePeer(h, &rec.id, objs, d.delta())
	} else {
		h = d.desired.AddPeer(&rec.id, objs, d.delta())
	}
	d.peers.Set(h, rec)
	return nil
}

// dropPeer forgets a peer and withdraws its objects, reporting whether
// there was one.
func (d *daemon) dropPeer(id lease.ID) bool {
	h, ok := d.desired.Handle(id)
	if ok {
		d.desired.DropPeer(h, d.delta())
		d.peers.Set(h, nil)
	}
	return ok
}
