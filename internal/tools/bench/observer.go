package bench

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sync/errgroup"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/tools/lab"
)

// Counts are the per-peer kernel objects found on the daemon's device:
// routes, neighbours and FDB entries for vxlan, WireGuard peers for
// wireguard (whose one route covers the whole network, so counts nothing).
type Counts struct {
	dataplane.DevCounts
	WGPeers int `json:",omitempty"`
}

// observer sees, from outside the daemon, one backend's per-peer kernel
// objects in the host's namespace.
type observer interface {
	// device is the link the per-peer objects hang off.
	device() string
	// pollEvery is how often bulk phases count.
	pollEvery() time.Duration
	count() (Counts, error)
	// complete reports whether c is every object of n peers (0: none).
	complete(c Counts, n int) bool
	describe(c Counts) string
	// watch starts seeing single peers come and go.
	watch(ctx context.Context) (singleWatch, error)
	// cost is what observing asked of the daemon under test.
	cost() observerCost
	close()
}

// observerCost is what observing asked of the daemon under test: UAPI
// gets and their wall time (zero when the kernel answers), and how long
// each get during the single samples took (the polling's resolution is
// its period plus about one get).
type observerCost struct {
	gets       int
	total      time.Duration
	singleGets []float64 // ms
}

// singleWatch sees one peer's object appear or go. expect is called
// before the write that causes the change (so nothing is missed), and the
// function it returns waits until the change is seen and returns when;
// it must be called (with a cancelled context, if the write failed), as
// it ends what expect started.
type singleWatch interface {
	expect(p peer, added bool) (wait func(context.Context) (seen, error))
	stop() error
}

// seen brackets when a change happened: after After, by At. A
// notification's arrival is one instant (After = At); polling knows only
// that the change came after the previous poll began and before this one
// ended.
type seen struct{ After, At time.Time }

// newObserver returns backend's observer for host h, whose namespace is
// ns, counting through probe.
func newObserver(backend string, h *lab.Host, ns netns.NsHandle, probe *dataplane.Probe) (observer, error) {
	switch backend {
	case config.BackendVXLAN:
		return &vxlanObserver{ns: ns, probe: probe}, nil
	case config.BackendWireGuard:
		return &wgObserver{r: newWGReader(ns, wgDevice, h.WireGuardSocket(wgDevice))}, nil
	}
	return nil, fmt.Errorf("backend %q: the bench knows vxlan and wireguard", backend)
}

const (
	// vxlanDevice is the VXLAN device every flannel daemon programs for
	// VNI 1.
	vxlanDevice = "flannel.1"
	// vxlanPoll is the counting dump's period. A dump of 3×10,000 entries
	// parsed only as far as their headers costs well under a millisecond,
	// so polling this often barely competes with the daemon for the CPU.
	vxlanPoll = 10 * time.Millisecond
	// wgDevice is the IPv4 WireGuard device of flannel's wireguard
	// backend.
	wgDevice = "flannel-wg"
	// wgPoll is the counting period for WireGuard: a get is O(K) text
	// (about 200 bytes a peer), served by the daemon itself when the
	// device is userspace.
	wgPoll = 25 * time.Millisecond
	// wgSinglePoll is the period while one peer is awaited: WireGuard
	// announces no peer changes, so single joins and leaves are seen by
	// polling, to within this (plus one get).
	wgSinglePoll = 2 * time.Millisecond
)

// vxlanObserver counts through raw netlink dumps and sees single peers
// through a route subscription: the route is the last object a join
// writes (after FDB entry and neighbour) and the first a leave deletes.
type vxlanObserver struct {
	ns    netns.NsHandle
	probe *dataplane.Probe
}

func (o *vxlanObserver) device() string           { return vxlanDevice }
func (o *vxlanObserver) pollEvery() time.Duration { return vxlanPoll }
func (o *vxlanObserver) cost() observerCost       { return observerCost{} }
func (o *vxlanObserver) close()                   {}

func (o *vxlanObserver) count() (Counts, error) {
	c, err := o.probe.Count(vxlanDevice)
	return Counts{DevCounts: c}, err
}

func (o *vxlanObserver) complete(c Counts, n int) bool {
	return c.Routes == n && c.Neighs == n && c.FDB == n
}

func (o *vxlanObserver) describe(c Counts) string {
	return fmt.Sprintf("%d routes, %d neighbours, %d fdb entries", c.Routes, c.Neighs, c.FDB)
}

func (o *vxlanObserver) watch(ctx context.Context) (singleWatch, error) {
	w, err := dataplane.OpenRouteWatch(o.ns)
	if err != nil {
		return nil, err
	}
	rw := &routeWatch{waiters: map[routeKey]chan time.Time{}}
	ctx, rw.cancel = context.WithCancel(ctx)
	rw.g.Go(func() error {
		return w.Run(ctx, func(dst netip.Prefix, added bool) {
			at := time.Now()
			rw.mu.Lock()
			ch, ok := rw.waiters[routeKey{dst, added}]
			delete(rw.waiters, routeKey{dst, added})
			rw.mu.Unlock()
			if ok {
				ch <- at
			}
		})
	})
	return rw, nil
}

type routeKey struct {
	dst   netip.Prefix
	added bool
}

// routeWatch hands each route notification, timed on arrival, to whoever
// expects it.
type routeWatch struct {
	cancel  context.CancelFunc
	g       errgroup.Group
	mu      sync.Mutex
	waiters map[routeKey]chan time.Time
}

func (rw *routeWatch) expect(p peer, added bool) func(context.Context) (seen, error) {
	ch := make(chan time.Time, 1)
	rw.mu.Lock()
	rw.waiters[routeKey{p.dst, added}] = ch
	rw.mu.Unlock()
	return func(ctx context.Context) (seen, error) {
		t := time.NewTimer(sampleTimeout)
		defer t.Stop()
		select {
		case at := <-ch:
			return seen{at, at}, nil
		case <-t.C:
			return seen{}, fmt.Errorf("no route notification for %s within %s", p.dst, sampleTimeout)
		case <-ctx.Done():
			return seen{}, ctx.Err()
		}
	}
}

func (rw *routeWatch) stop() error {
	rw.cancel()
	return rw.g.Wait()
}

// wgObserver reads the WireGuard device's peers (wgReader) for both bulk
// counts and single samples.
type wgObserver struct {
	r          *wgReader
	singleGets []float64 // ms, each get's wall time while awaiting a single
}

func (o *wgObserver) device() string           { return wgDevice }
func (o *wgObserver) pollEvery() time.Duration { return wgPoll }
func (o *wgObserver) close()                   { o.r.close() }

func (o *wgObserver) cost() observerCost {
	return observerCost{gets: o.r.gets, total: o.r.getTime, singleGets: o.singleGets}
}

func (o *wgObserver) count() (Counts, error) {
	keys, err := o.r.read()
	return Counts{WGPeers: len(keys)}, err
}

func (o *wgObserver) complete(c Counts, n int) bool { return c.WGPeers == n }

func (o *wgObserver) describe(c Counts) string { return fmt.Sprintf("%d wireguard peers", c.WGPeers) }

func (o *wgObserver) watch(context.Context) (singleWatch, error) { return o, nil }

func (o *wgObserver) stop() error { return nil }

// expect polls every wgSinglePoll, from now (before the write) until p's
// public key is present (or absent). The change happened before the end
// of the first get that shows it and after the start of the last get that
// did not (the device answers from one moment in between): at most one
// period and two gets apart.
func (o *wgObserver) expect(p peer, added bool) func(context.Context) (seen, error) {
	type result struct {
		s   seen
		err error
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch, done := make(chan result, 1), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(wgSinglePoll)
		defer t.Stop()
		var before time.Time // start of the last get without the change
		for {
			start := time.Now()
			keys, err := o.r.read()
			at := time.Now()
			o.singleGets = append(o.singleGets, ms(at.Sub(start)))
			if err != nil {
				ch <- result{err: err}
				return
			}
			if _, ok := keys[p.pub]; ok == added {
				ch <- result{s: seen{before, at}}
				return
			}
			before = start
			select {
			case <-ctx.Done():
				ch <- result{err: ctx.Err()}
				return
			case <-t.C:
			}
		}
	}()
	return func(wctx context.Context) (seen, error) {
		// The poller owns the reader until it has ended.
		defer func() { cancel(); <-done }()
		t := time.NewTimer(sampleTimeout)
		defer t.Stop()
		select {
		case r := <-ch:
			return r.s, r.err
		case <-t.C:
			return seen{}, fmt.Errorf("wireguard peer %s (%s) still %s after %s",
				p.pub, p.dst, map[bool]string{true: "absent", false: "present"}[added], sampleTimeout)
		case <-wctx.Done():
			return seen{}, wctx.Err()
		}
	}
}
