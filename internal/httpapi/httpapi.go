// Package httpapi serves flanneld's HTTP endpoints: /healthz (is the
// daemon alive and converging?), /readyz (is this node's networking in
// place?), /metrics, and /v1/status (the JSON `weft status` reads).
// Upstream's /healthz answers 200 whatever happens; ours fails when the
// control loop stalls or the lease watch has been dead past a deadline, so
// a liveness probe means something.
//
// Two listeners serve them. --healthz-ip:--healthz-port (TCP, where the
// kubelet and Prometheus look) serves the probes and /metrics, and
// /v1/status only when asked to (--healthz-status): the status lists every
// peer's address, subnet and MAC, which the network at large has no need
// to read without authentication. A unix socket only its owner may open
// (ServeUnix, mode 0600) serves everything, for `weft status` on the host.
package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Health is the daemon's health as the HTTP handlers see it. The control
// loop writes it; handlers read it; a mutex guards the fields. Its setters
// are no-ops on a nil receiver.
type Health struct {
	mu sync.Mutex
	// configuration
	resync        time.Duration
	watchDeadline time.Duration
	watchDown     func() time.Time
	now           func() time.Time
	// state
	looping     bool
	lastPass    time.Time
	leaseHeld   bool
	programmed  bool
	subnetFile  bool
	rulesNeeded bool
	rulesOK     bool
}

// NewHealth returns a Health for a loop that passes at least every resync.
// watchDown reports since when the lease watch has been broken (zero while
// healthy; nil if the store cannot tell); past watchDeadline /healthz fails.
func NewHealth(resync, watchDeadline time.Duration, watchDown func() time.Time) *Health {
	return &Health{resync: resync, watchDeadline: watchDeadline, watchDown: watchDown, now: time.Now}
}

// LeaseHeld records whether we hold our lease; the control loop starts
// once it does.
func (h *Health) LeaseHeld(v bool) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.leaseHeld = v
	if v && !h.looping {
		h.looping, h.lastPass = true, h.now()
	}
}

// PassDone records a completed reconcile pass; ok says it programmed
// everything.
func (h *Health) PassDone(ok bool) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastPass = h.now()
	if ok {
		h.programmed = true
	}
}

// SubnetFileWritten records that subnet.env is in place.
func (h *Health) SubnetFileWritten() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.subnetFile = true
}

// Rules records the state of masquerade/forward rules; needed is false
// when none are configured.
func (h *Health) Rules(needed, ok bool) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rulesNeeded, h.rulesOK = needed, ok
}

// Live returns nil when the daemon is alive: its control loop has passed
// within three resync periods and the lease watch is not dead past the
// deadline. Before the loop starts (waiting for etcd or a lease) it is
// alive: it is retrying, and restarting it would not help.
func (h *Health) Live() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	if h.looping {
		if stall := now.Sub(h.lastPass); stall > 3*h.resync {
			return fmt.Errorf("control loop: no reconcile pass for %s (resync period %s)", stall.Round(time.Second), h.resync)
		}
	}
	if h.watchDown != nil {
		if since := h.watchDown(); !since.IsZero() && now.Sub(since) > h.watchDeadline {
			return fmt.Errorf("lease watch: down for %s", now.Sub(since).Round(time.Second))
		}
	}
	return nil
}

// Ready returns nil when this node's networking is in place: lease held,
// dataplane programmed, subnet.env written and rules (if any) installed.
// It stays ready while the store is unreachable: the kernel state keeps
// working without it.
func (h *Health) Ready() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var missing []string
	if !h.leaseHeld {
		missing = append(missing, "no subnet lease")
	}
	if !h.programmed {
		missing = append(missing, "dataplane not programmed")
	}
	if !h.subnetFile {
		missing = append(missing, "subnet file not written")
	}
	if h.rulesNeeded && !h.rulesOK {
		missing = append(missing, "masquerade rules not in place")
	}
	if len(missing) > 0 {
		return errors.New(strings.Join(missing, "; "))
	}
	return nil
}

// maxScrapes bounds the /metrics requests served at once; more are
// answered 503 at once. Prometheus scrapes one at a time; a flood of
// requests then costs a bounded amount of CPU.
const maxScrapes = 16

// Handler serves /healthz, /readyz, /metrics and, when status is not nil,
// /v1/status: status returns the JSON body (daemon.Board.JSON, which
// renders at most once per interval and shares the result).
func Handler(h *Health, reg *prometheus.Registry, status func() []byte) http.Handler {
	mux := http.NewServeMux()
	check := func(f func() error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			if err := f(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, err)
				return
			}
			fmt.Fprintln(w, "ok")
		}
	}
	mux.Handle("/healthz", check(h.Live))
	mux.Handle("/readyz", check(h.Ready))
	if reg != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, MaxRequestsInFlight: maxScrapes}))
	}
	if status != nil {
		mux.HandleFunc("/v1/status", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(status())
		})
	}
	return mux
}

// Serve listens on addr (TCP) and serves handler until ctx ends.
func Serve(ctx context.Context, log *slog.Logger, addr string, handler http.Handler) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("healthz listener: %w", err)
	}
	log.Info("serving health and metrics", "addr", l.Addr().String())
	if err := serve(ctx, l, handler); err != nil {
		return fmt.Errorf("healthz server: %w", err)
	}
	return nil
}

// serve serves handler on l until ctx ends. The timeouts keep a client
// that sends slowly, or never reads, from holding a connection open.
func serve(ctx context.Context, l net.Listener, handler http.Handler) error {
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
