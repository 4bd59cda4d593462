package daemon

import (
	"net/netip"
	"time"

	"github.com/weft-net/weft/internal/subnetenv"
)

// subnet.env is how the CNI plugin learns this host's subnet: until it is
// written no pod can start here. Writing it can fail for reasons outside
// the daemon — a read-only or full /run/flannel — that an operator can
// fix while the daemon runs. So a failed write does not stop the daemon
// or hold up the dataplane (peers are installed as usual, and pods
// already running keep talking): it makes /readyz 503 with the reason,
// is counted (flannel_subnet_file_write_errors_total), logged once per
// distinct error (then a reminder a minute), and retried 100 ms later,
// the wait doubling to 5 s, until it succeeds. Each resync checks the
// file again and puts it back if it was removed or changed (a read of
// ~200 bytes; no write when it is right).

const (
	subnetRetryMin    = 100 * time.Millisecond
	subnetRetryMax    = 5 * time.Second
	subnetRemindEvery = time.Minute
)

// subnetFile is the state of subnet.env's writing; the control goroutine
// owns it.
type subnetFile struct {
	t       *time.Timer
	pending bool // a retry is scheduled on t
	wait    time.Duration
	// The current run of failed writes: how many, since when, and what
	// was last logged at error or warning level, when.
	failures int
	since    time.Time
	logged   string
	loggedAt time.Time
	written  bool // the file has held our content at least once
}

// timer returns the retry timer, created stopped.
func (f *subnetFile) timer() *time.Timer {
	if f.t == nil {
		f.t = time.NewTimer(time.Hour)
		f.t.Stop()
	}
	return f.t
}

// subnetEnv is what subnet.env should say.
func (d *daemon) subnetEnv() subnetenv.Env {
	e := subnetenv.Env{MTU: d.backend.MTU(), IPMasq: d.opts.IPMasq}
	if d.net.EnableIPv4 {
		e.Networks, e.Subnet = []netip.Prefix{d.net.Network}, subnetenv.GatewayOf(d.self.Subnet)
	}
	if d.net.EnableIPv6 {
		e.IPv6Networks, e.IPv6Subnet = []netip.Prefix{d.net.IPv6Network}, subnetenv.GatewayOf(d.self.IPv6Subnet)
	}
	return e
}

// syncSubnetFile makes subnet.env hold what it should, writing it unless
// it already does; a failure schedules a retry (see above).
func (d *daemon) syncSubnetFile() {
	f := &d.subnet
	path := d.opts.SubnetFile
	e := d.subnetEnv()
	if subnetenv.Holds(path, e) {
		if !f.written || f.failures > 0 {
			// Already right: left by our previous run, or put back by
			// someone while we were retrying.
			d.log.Info("subnet file up to date", "path", path)
			d.subnetFileOK()
		}
		return
	}
	err := subnetenv.Write(path, e)
	if err == nil {
		args := []any{"path", path}
		if f.failures > 0 {
			args = append(args, "failed_attempts", f.failures, "failing_for", time.Since(f.since).Round(time.Millisecond))
		}
		d.log.Info("wrote subnet file", args...)
		d.subnetFileOK()
		return
	}
	now := time.Now()
	if f.failures == 0 {
		f.since = now
	}
	f.failures++
	f.wait = min(max(2*f.wait, subnetRetryMin), subnetRetryMax)
	f.timer().Reset(f.wait)
	f.pending = true
	d.cfg.Metrics.SubnetFileWriteFailed()
	d.cfg.Health.SubnetFileFailed(err)
	msg := err.Error()
	switch {
	case msg != f.logged:
		d.log.Error("cannot write subnet file; pods cannot start on this node until it is written; retrying",
			"err", msg, "retry_in", f.wait)
	case now.Sub(f.loggedAt) >= subnetRemindEvery:
		d.log.Warn("still cannot write subnet file; retrying", "err", msg,
			"failed_attempts", f.failures, "failing_for", now.Sub(f.since).Round(time.Second), "retry_in", f.wait)
	default:
		d.log.Debug("subnet file write failed again", "err", msg, "retry_in", f.wait)
		return
	}
	f.logged, f.loggedAt = msg, now
}

// subnetFileOK records that subnet.env holds our content, and ends a run
// of failures.
func (d *daemon) subnetFileOK() {
	f := &d.subnet
	f.written = true
	f.failures, f.wait, f.logged = 0, 0, ""
	if f.pending {
		f.timer().Stop()
		f.pending = false
	}
	d.cfg.Metrics.SubnetFileWritten(time.Now())
	d.cfg.Health.SubnetFileWritten()
}
