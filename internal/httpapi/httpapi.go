// Package httpapi serves flanneld's HTTP endpoints: /healthz (is the
// daemon alive and converging?), /readyz (is this node's networking in
// place?), /metrics, and /v1/status (the JSON `weft status` reads).
// Upstream's /healthz answers 200 whatever happens; ours fails when the
// control loop stalls, so a liveness probe means something.
//
// An unreachable lease store (etcd, the Kubernetes API) fails neither.
// The dataplane keeps working without it: pods keep talking, and changes
// are applied when the store answers again. A liveness failure would get
// the daemon restarted, which cannot bring the store back and would leave
// the node unreconciled, and then unready, while the new process waits for
// the store to start. A readiness failure would say this node's
// networking is broken when it is not, and stall rollouts for nothing. So
// /readyz stays 200 and says, below its "ok", since when the store has
// been unreachable; `weft status` and the metric
// flannel_store_unreachable_since_timestamp_seconds say the same
// (docs/RELIABILITY.md).
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
	resync    time.Duration
	storeDown func() time.Time
	now       func() time.Time
	// state
	looping      bool
	lastPass     time.Time
	leaseHeld    bool
	leaseProblem string
	leaseNote    string
	programmed   bool
	subnetFile   bool
	subnetErr    string
	rulesNeeded  bool
	rulesOK      bool
}

// NewHealth returns a Health for a loop that passes at least every resync.
// storeDown reports since when the lease store has been unreachable (zero
// while it answers; nil if the store cannot tell), for /readyz's notes.
func NewHealth(resync time.Duration, storeDown func() time.Time) *Health {
	return &Health{resync: resync, storeDown: storeDown, now: time.Now}
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

// SetLease records trouble with our lease once held: problem, if set, makes
// the node unready (another host holds our subnet); note, if set, is shown
// while ready (the lease lapsed and is being reclaimed). Empty strings
// clear them.
func (h *Health) SetLease(problem, note string) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.leaseProblem, h.leaseNote = problem, note
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
	h.subnetFile, h.subnetErr = true, ""
}

// SubnetFileFailed records that writing subnet.env failed (and is being
// retried): the node is unready, and /readyz says why, until a write
// succeeds.
func (h *Health) SubnetFileFailed(err error) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.subnetErr = err.Error()
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
// within three resync periods. Before the loop starts (waiting for the
// store or a lease) it is alive: it is retrying, and restarting it would
// not help; nor would it while the store is unreachable (package doc).
func (h *Health) Live() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.looping {
		if stall := h.now().Sub(h.lastPass); stall > 3*h.resync {
			return fmt.Errorf("control loop: no reconcile pass for %s (resync period %s)", stall.Round(time.Second), h.resync)
		}
	}
	return nil
}

// Notes returns what /readyz says below "ok": since when the store has
// been unreachable, and the lease's note.
func (h *Health) Notes() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var notes []string
	if h.storeDown != nil {
		if since := h.storeDown(); !since.IsZero() {
			notes = append(notes, fmt.Sprintf("store unreachable since %s (%s); the dataplane is kept as it was and changes are applied when the store answers",
				since.UTC().Format(time.RFC3339), h.now().Sub(since).Round(time.Second)))
		}
	}
	if h.leaseNote != "" {
		notes = append(notes, h.leaseNote)
	}
	return notes
}

// Ready returns nil when this node's networking is in place: lease held,
// dataplane programmed, subnet.env written and rules (if any) installed.
// It stays ready while the store is unreachable: the kernel state keeps
// working without it (package doc).
func (h *Health) Ready() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var missing []string
	switch {
	case !h.leaseHeld:
		missing = append(missing, "no subnet lease")
	case h.leaseProblem != "":
		missing = append(missing, h.leaseProblem)
	}
	if !h.programmed {
		missing = append(missing, "dataplane not programmed")
	}
	switch {
	case h.subnetErr != "":
		missing = append(missing, "subnet file not written (retrying): "+h.subnetErr)
	case !h.subnetFile:
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
	check := func(f func() error, notes func() []string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			var lines []string
			if err := f(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				lines = append(lines, err.Error())
			} else {
				lines = append(lines, "ok")
			}
			if notes != nil {
				lines = append(lines, notes()...)
			}
			fmt.Fprintln(w, strings.Join(lines, "\n"))
		}
	}
	mux.Handle("/healthz", check(h.Live, nil))
	mux.Handle("/readyz", check(h.Ready, h.Notes))
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
