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

// Pings is what a Prober needs of a Pinger.
type Pings interface {
	Ping(ctx context.Context, dst netip.Addr, o Options) (time.Duration, error)
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
// and keeps the latest result per target (a map entry of its address and
// 32 bytes; for the unreachable also the caller's key and the text of the
// last error).
type Prober[K comparable] struct {
	cfg Config[K]

	mu sync.Mutex
	// state is each target's, by address: a peer's probe address is
	// its own, and 24 bytes of key where the caller's is 64 (a dual-
	// stack lease ID). keys names the unreachable ones for Report.
	state   map[netip.Addr]targetState
	keys    map[netip.Addr]K
	up      int // reachable
	down    int // unreachable
	version uint64
	rounds  uint64
	started time.Time // of the last round
}

type targetState struct {
	since int64 // Unix nanoseconds: of the current state
	round uint32
	// known: a result exists; up: the last one was a reply.
	known, up bool
	lastErr   string // while down
}

// New returns a Prober; Run it.
func New[K comparable](cfg Config[K]) *Prober[K] {
	if cfg.Timeout <= 0 {
		cfg.Timeout = min(time.Second, cfg.Interval/4)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Prober[K]{cfg: cfg, state: map[netip.Addr]targetState{}, keys: map[netip.Addr]K{}}
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
			probes.Go(func() { p.probe(ctx, tg) })
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

// begin starts a round: it takes the targets, forgets those gone (or
// whose address changed) and returns them in address order, so each is
// probed at about the same point of every round.
func (p *Prober[K]) begin(now time.Time) []Target[K] {
	targets := p.cfg.Targets()
	slices.SortFunc(targets, func(a, b Target[K]) int { return a.Addr.Compare(b.Addr) })
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rounds++
	p.started = now
	round := uint32(p.rounds)
	for _, tg := range targets {
		st, ok := p.state[tg.Addr]
		if !ok {
			p.version++
		}
		if k, down := p.keys[tg.Addr]; down && k != tg.Key {
			p.keys[tg.Addr] = tg.Key // the address moved to another lease
			p.version++
		}
		st.round = round
		p.state[tg.Addr] = st
	}
	for a, st := range p.state {
		if st.round != round {
			p.forget(a, st)
		}
	}
	p.publishCounts()
	return targets
}

// forget drops a target's state; p.mu is held.
func (p *Prober[K]) forget(a netip.Addr, st targetState) {
	if st.known {
		if st.up {
			p.up--
		} else {
			p.down--
		}
	}
	p.version++
	delete(p.state, a)
	delete(p.keys, a)
}

func (p *Prober[K]) publishCounts() {
	if p.cfg.Observer != nil {
		p.cfg.Observer.SetReachable(p.up, p.down)
	}
}

// probe probes one target, retrying a failure once, and records it.
func (p *Prober[K]) probe(ctx context.Context, tg Target[K]) {
	o := Options{Timeout: p.cfg.Timeout}
	rtt, err := p.cfg.Pinger.Ping(ctx, tg.Addr, o)
	if err != nil && ctx.Err() == nil {
		rtt, err = p.cfg.Pinger.Ping(ctx, tg.Addr, o)
	}
	if ctx.Err() != nil {
		return
	}
	if err == nil && p.cfg.Observer != nil {
		p.cfg.Observer.ProbeRTT(rtt)
	}
	p.record(tg, rtt, err, time.Now())
}

// record stores a result.
func (p *Prober[K]) record(tg Target[K], rtt time.Duration, err error, now time.Time) {
	up := err == nil
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.state[tg.Addr]
	if !ok {
		return // gone meanwhile
	}
	defer func() { p.state[tg.Addr] = st }()
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
				p.up--
			} else {
				p.down--
			}
		}
		if up {
			p.up++
		} else {
			p.down++
		}
		st.known, st.up, st.since = true, up, now.UnixNano()
		if up {
			delete(p.keys, tg.Addr)
		} else {
			p.keys[tg.Addr] = tg.Key
		}
		p.version++
		p.publishCounts()
	}
	if up {
		st.lastErr = ""
		return
	}
	msg := err.Error()
	if errors.Is(err, ErrTimeout) {
		msg = ErrTimeout.Error() + " within " + p.cfg.Timeout.String() + " (2 probes)"
	}
	if msg != st.lastErr {
		st.lastErr = msg
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
		Targets: len(p.state), Reachable: p.up, Unreachable: p.down}
	r.Down = make([]Down[K], 0, p.down)
	for a, k := range p.keys {
		st := p.state[a]
		r.Down = append(r.Down, Down[K]{Key: k, Addr: a, Since: time.Unix(0, st.since), LastError: st.lastErr})
	}
	slices.SortFunc(r.Down, func(a, b Down[K]) int { return a.Addr.Compare(b.Addr) })
	return r
}
