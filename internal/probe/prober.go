package probe

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Target is one thing to probe: a key naming it to the caller (the
// daemon's lease.ID) and the address that answers for it.
type Target[K comparable] struct {
	Key  K
	Addr netip.Addr
}

// Pings is what a Prober needs of a Pinger: Start, which probes without
// a goroutine waiting (see Pinger.Start).
type Pings interface {
	Start(ctx context.Context, dst netip.Addr, o Options, done func(time.Duration, error))
}

// Observer is told of every result (the daemon's metrics). Its methods
// are called from the probing goroutines, concurrently.
type Observer interface {
	// ProbeRTT is a probe answered after rtt.
	ProbeRTT(rtt time.Duration)
	// ReachabilityChanged: a target went from reachable to unreachable
	// or back (not its first result).
	ReachabilityChanged()
	// SetReachable is the current count of each.
	SetReachable(reachable, unreachable int)
}

// Config is a Prober's.
type Config[K comparable] struct {
	Pinger Pings
	// Interval is the time in which every target is probed once; the
	// probes are spread evenly over it.
	Interval time.Duration
	// Timeout bounds each probe; 0 means min(1 s, Interval/4). A failed
	// probe is retried once at once, so a target is unreachable after
	// two probes without an answer (one lost packet is not an outage).
	Timeout time.Duration
	// Targets is called at the start of each round for the current
	// targets. It runs on the Prober's goroutine.
	Targets func() []Target[K]
	// Observer may be nil.
	Observer Observer
	Log      *slog.Logger
}

// Prober probes a set of targets continuously, one round per Interval,
// and keeps the latest result per target: 16 bytes beside the target
// itself, in a slice in address order (for the unreachable also the text
// of the last error, in a map of those alone).
type Prober[K comparable] struct {
	cfg Config[K]

	mu sync.Mutex
	// targets are this round's, in address order, one per address;
	// states[i] is targets[i]'s. Both are replaced, not modified, by
	// begin (Run reads targets without the lock).
	targets []Target[K]
	states  []targetState
	// down holds what only an unreachable target needs, by address.
	down    map[netip.Addr]string // the last error's text
	nUp     int                   // reachable
	nDown   int                   // unreachable
	version uint64
	rounds  uint64
	started time.Time // of the last round
}

type targetState struct {
	since int64 // Unix nanoseconds: of the current state
	// known: a result exists; up: the last one was a reply.
	known, up bool
}

// New returns a Prober; Run it.
func New[K comparable](cfg Config[K]) *Prober[K] {
	if cfg.Timeout <= 0 {
		cfg.Timeout = min(time.Second, cfg.Interval/4)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Prober[K]{cfg: cfg, down: map[netip.Addr]string{}}
}

// Run probes until ctx ends; it waits for its probes before returning.
func (p *Prober[K]) Run(ctx context.Context) error {
	var probes sync.WaitGroup
	defer probes.Wait()
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for {
		start := time.Now()
		targets := p.begin(start)
		if len(targets) == 0 {
			// Nothing to probe yet (a daemon before its first pass):
			// look again soon rather than an interval later.
			if err := sleepUntil(ctx, t, start.Add(min(p.cfg.Interval, time.Second))); err != nil {
				return err
			}
			continue
		}
		gap := p.cfg.Interval / time.Duration(max(len(targets), 1))
		for i, tg := range targets {
			if err := sleepUntil(ctx, t, start.Add(time.Duration(i)*gap)); err != nil {
				return err
			}
			p.probe(ctx, tg, &probes)
		}
		if err := sleepUntil(ctx, t, start.Add(p.cfg.Interval)); err != nil {
			return err
		}
	}
}

// sleepUntil waits on t until at, or returns ctx's error.
func sleepUntil(ctx context.Context, t *time.Timer, at time.Time) error {
	d := time.Until(at)
	if d <= 0 {
		return ctx.Err()
	}
	t.Reset(d)
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// begin starts a round: it takes the targets (one per address: the
// first of those sharing one), carries over the state of those probed
// before, forgets those gone (or whose address changed) and returns them
// in address order, so each is probed at about the same point of every
// round.
func (p *Prober[K]) begin(now time.Time) []Target[K] {
	targets := p.cfg.Targets()
	slices.SortStableFunc(targets, func(a, b Target[K]) int { return a.Addr.Compare(b.Addr) })
	targets = slices.CompactFunc(targets, func(a, b Target[K]) bool { return a.Addr == b.Addr })
	states := make([]targetState, len(targets))
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rounds++
	p.started = now
	// Both lists are in address order: walk them side by side.
	old, j := p.targets, 0
	for i, tg := range targets {
		for j < len(old) && old[j].Addr.Less(tg.Addr) {
			p.forget(old[j].Addr, p.states[j])
			j++
		}
		if j < len(old) && old[j].Addr == tg.Addr {
			states[i] = p.states[j]
			if states[i].known && !states[i].up && old[j].Key != tg.Key {
				p.version++ // an unreachable address moved to another key
			}
			j++
			continue
		}
		p.version++ // a new target
	}
	for ; j < len(old); j++ {
		p.forget(old[j].Addr, p.states[j])
	}
	p.targets, p.states = targets, states
	p.publishCounts()
	return targets
}

// forget drops a target's state; p.mu is held.
func (p *Prober[K]) forget(a netip.Addr, st targetState) {
	if st.known {
		if st.up {
			p.nUp--
		} else {
			p.nDown--
		}
	}
	p.version++
	delete(p.down, a)
}

// find returns the index of a's target, if it is one this round.
func (p *Prober[K]) find(a netip.Addr) (int, bool) {
	return slices.BinarySearchFunc(p.targets, a, func(t Target[K], a netip.Addr) int { return t.Addr.Compare(a) })
}

func (p *Prober[K]) publishCounts() {
	if p.cfg.Observer != nil {
		p.cfg.Observer.SetReachable(p.nUp, p.nDown)
	}
}

// probe probes one target, retrying a failure once, and records it. No
// goroutine waits meanwhile: a round over thousands of unanswering
// targets keeps thousands of probes in flight (two timeouts each), which
// as blocked goroutines took megabytes of stacks. inflight counts it
// until its outcome is recorded.
func (p *Prober[K]) probe(ctx context.Context, tg Target[K], inflight *sync.WaitGroup) {
	o := Options{Timeout: p.cfg.Timeout}
	inflight.Add(1)
	outcome := func(rtt time.Duration, err error) {
		defer inflight.Done()
		if ctx.Err() != nil {
			return
		}
		if err == nil && p.cfg.Observer != nil {
			p.cfg.Observer.ProbeRTT(rtt)
		}
		p.record(tg, rtt, err, time.Now())
	}
	p.cfg.Pinger.Start(ctx, tg.Addr, o, func(rtt time.Duration, err error) {
		if err != nil && ctx.Err() == nil {
			p.cfg.Pinger.Start(ctx, tg.Addr, o, outcome)
			return
		}
		outcome(rtt, err)
	})
}

// record stores a result.
func (p *Prober[K]) record(tg Target[K], rtt time.Duration, err error, now time.Time) {
	up := err == nil
	p.mu.Lock()
	defer p.mu.Unlock()
	i, ok := p.find(tg.Addr)
	if !ok {
		return // gone meanwhile
	}
	st := &p.states[i]
	changed := !st.known || st.up != up
	if st.known && changed && p.cfg.Observer != nil {
		p.cfg.Observer.ReachabilityChanged()
	}
	if st.known && changed {
		if up {
			p.cfg.Log.Info("peer reachable again", "addr", tg.Addr, "unreachable_for", now.Sub(time.Unix(0, st.since)).Round(time.Millisecond))
		} else {
			p.cfg.Log.Warn("peer unreachable", "addr", tg.Addr, "err", err)
		}
	}
	if changed {
		if st.known {
			if st.up {
				p.nUp--
			} else {
				p.nDown--
			}
		}
		if up {
			p.nUp++
		} else {
			p.nDown++
		}
		st.known, st.up, st.since = true, up, now.UnixNano()
		p.version++
		p.publishCounts()
	}
	if up {
		delete(p.down, tg.Addr)
		return
	}
	msg := err.Error()
	if errors.Is(err, ErrTimeout) {
		msg = ErrTimeout.Error() + " within " + p.cfg.Timeout.String() + " (2 probes)"
	}
	if last, ok := p.down[tg.Addr]; !ok || msg != last {
		p.down[tg.Addr] = msg
		p.version++
	}
}

// Report is a Prober's results.
type Report[K comparable] struct {
	// Version changes whenever anything else in a Report would.
	Version  uint64
	Interval time.Duration
	Rounds   uint64 // rounds begun
	// Targets were probed or are due this round; Reachable and
	// Unreachable have a result (the rest have none yet).
	Targets, Reachable, Unreachable int
	// Down lists the unreachable targets, in address order.
	Down []Down[K]
}

// Down is an unreachable target.
type Down[K comparable] struct {
	Key       K
	Addr      netip.Addr
	Since     time.Time // first failed probe since the last reply (or since probing began)
	LastError string
}

// Version is Report().Version, without building the report.
func (p *Prober[K]) Version() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.version
}

// Report returns the current results.
func (p *Prober[K]) Report() Report[K] {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := Report[K]{Version: p.version, Interval: p.cfg.Interval, Rounds: p.rounds,
		Targets: len(p.targets), Reachable: p.nUp, Unreachable: p.nDown}
	r.Down = make([]Down[K], 0, p.nDown)
	for a, msg := range p.down {
		if i, ok := p.find(a); ok {
			r.Down = append(r.Down, Down[K]{Key: p.targets[i].Key, Addr: a, Since: time.Unix(0, p.states[i].since), LastError: msg})
		}
	}
	slices.SortFunc(r.Down, func(a, b Down[K]) int { return a.Addr.Compare(b.Addr) })
	return r
}
