// Package doctor checks a host for the faults behind most overlay
// networking bug reports (flannel's and ours): packets corrupted by VXLAN
// checksum offload, an overlay MTU that does not fit the path, rp_filter,
// ip_forward, br_netfilter, a FORWARD policy of DROP, foreign routes in the
// cluster network, a second flanneld, a stale subnet.env, duplicate leases
// and a skewed clock. `weft doctor` runs every check and prints a line per
// finding; --fix applies the fixes marked safe.
//
// Each check is a function of an Env: the host seen through a small Host
// interface (sysctls, links, routes, ethtool, processes, files, the
// FORWARD chain), the local daemon's status, and optionally the lease
// store and probers. Tests run the checks against a fake Host with the
// fault in it, and e2e tests run `weft doctor` in a lab host's namespace
// with the fault injected for real.
//
// A fix is safe when it changes one kernel setting, in the direction the
// cluster needs, that nothing else on a flannel host relies on the other
// way: a sysctl (ip_forward on, rp_filter loose, bridge-nf-call-iptables
// on) or our own VXLAN device's TX checksum offload off. Everything else
// (routes, processes, files, leases, iptables policy, clocks) is someone's
// decision: the doctor says what to do and does not do it.
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/lease"
)

// Level is a finding's severity.
type Level string

// Levels, from good to bad; Skip: the check could not run here (no
// daemon, no store, not this backend).
const (
	OK   Level = "ok"
	Skip Level = "skip"
	Warn Level = "warn"
	Fail Level = "fail"
)

// Finding is one line of the report.
type Finding struct {
	Check   string `json:"check"`
	Level   Level  `json:"level"`
	Message string `json:"message"`
	// Fix says what to do; Fixable says --fix does it itself.
	Fix     string `json:"fix,omitempty"`
	Fixable bool   `json:"fixable,omitempty"`
	// Fixed: --fix applied it and the check passed afterwards;
	// FixError: it failed.
	Fixed    bool   `json:"fixed,omitempty"`
	FixError string `json:"fixError,omitempty"`

	apply func(Host) error
}

// Env is what the checks read.
type Env struct {
	Host Host
	// Status is the local daemon's; nil when it could not be read
	// (StatusErr says why).
	Status    *httpapi.Status
	StatusErr error
	// SubnetFile is the subnet.env to compare (default: the daemon's).
	SubnetFile string
	// Store reads the leases and etcd's clock; nil: the store checks skip.
	Store Store
	// Reach probes peers through the overlay; nil: not built here.
	Reach Reach
	// Sample bounds the peers probed per check (0: 16).
	Sample int
}

// Store is the lease store as the doctor reads it.
type Store interface {
	Leases(ctx context.Context) ([]lease.Event, error)
	// Clock returns the store server's wall clock and the round trip it
	// was read in.
	Clock(ctx context.Context) (time.Time, time.Duration, error)
}

// Reach probes a peer's overlay address from this host.
type Reach interface {
	// UDP sends a datagram to a closed port of dst through the overlay
	// and reports whether the peer's kernel answered (port unreachable):
	// proof that the datagram, its checksum included, arrived intact.
	UDP(ctx context.Context, dst netip.Addr) (bool, error)
	// DF sends an ICMP echo of size bytes (IP header included) with
	// don't-fragment set and reports whether it was answered.
	// SysReach's is internal/probe's Pinger, the daemon's own prober.
	DF(ctx context.Context, dst netip.Addr, size int) (bool, error)
}

// Check is one named check.
type Check struct {
	Name string
	Run  func(ctx context.Context, e *Env) []Finding
}

// Checks returns every check, in report order.
func Checks() []Check {
	return []Check{
		{"daemon", checkDaemon},
		{"ip_forward", checkIPForward},
		{"rp_filter", checkRPFilter},
		{"br_netfilter", checkBridgeNetfilter},
		{"forward-policy", checkForwardPolicy},
		{"routes", checkRoutes},
		{"flanneld-processes", checkProcesses},
		{"subnet.env", checkSubnetEnv},
		{"duplicate-leases", checkDuplicateLeases},
		{"clock-skew", checkClockSkew},
		{"tx-checksum", checkTxChecksum},
		{"mtu", checkMTU},
	}
}

// Report is what `weft doctor --json` prints.
type Report struct {
	Findings []Finding `json:"findings"`
	OK       bool      `json:"ok"` // no failure
}

// Run runs the checks; with fix, it applies each fixable finding's fix
// and runs that check again to see it pass.
func Run(ctx context.Context, e *Env, checks []Check, fix bool) Report {
	var rep Report
	for _, c := range checks {
		fs := runOne(ctx, e, c)
		if fix && anyFixable(fs) {
			fs = applyFixes(ctx, e, c, fs)
		}
		rep.Findings = append(rep.Findings, fs...)
	}
	rep.OK = true
	for _, f := range rep.Findings {
		if f.Level == Fail {
			rep.OK = false
		}
	}
	return rep
}

func runOne(ctx context.Context, e *Env, c Check) []Finding {
	fs := c.Run(ctx, e)
	for i := range fs {
		fs[i].Check = c.Name
	}
	return fs
}

func anyFixable(fs []Finding) bool {
	for _, f := range fs {
		if f.Fixable && f.apply != nil {
			return true
		}
	}
	return false
}

// applyFixes applies the fixable findings' fixes, then runs the check
// again: findings that are gone are reported fixed (at level ok), those
// still there keep their level.
func applyFixes(ctx context.Context, e *Env, c Check, fs []Finding) []Finding {
	errs := map[string]string{}
	for _, f := range fs {
		if f.Fixable && f.apply != nil {
			if err := f.apply(e.Host); err != nil {
				errs[f.Message] = err.Error()
			}
		}
	}
	after := runOne(ctx, e, c)
	still := map[string]bool{}
	for _, f := range after {
		if f.Level == Warn || f.Level == Fail {
			still[f.Message] = true
		}
	}
	var out []Finding
	for _, f := range fs {
		if !f.Fixable || f.apply == nil {
			continue
		}
		if still[f.Message] {
			f.FixError = errs[f.Message]
			if f.FixError == "" {
				f.FixError = "applied, but the check still fails"
			}
		} else {
			f.Fixed, f.Level = true, OK
		}
		out = append(out, f)
	}
	// The re-run's findings, minus those the fixed list already reports.
	fixed := map[string]bool{}
	for _, f := range out {
		fixed[f.Message] = true
	}
	for _, f := range after {
		if !fixed[f.Message] {
			out = append(out, f)
		}
	}
	return out
}

// Print writes one line per finding: level, check, message, and the fix.
func (r Report) Print(w io.Writer) {
	for _, f := range r.Findings {
		msg := f.Message
		switch {
		case f.Fixed:
			msg += " — fixed: " + f.Fix
		case f.FixError != "":
			msg += " — fix failed (" + f.FixError + "): " + f.Fix
		case f.Fix != "" && f.Level != OK:
			if f.Fixable {
				msg += " — fix (--fix does it): " + f.Fix
			} else {
				msg += " — fix: " + f.Fix
			}
		}
		fmt.Fprintf(w, "%-4s  %-18s  %s\n", f.Level, f.Check, strings.ReplaceAll(msg, "\n", " "))
	}
}

// JSON writes the report as indented JSON.
func (r Report) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func ok(msg string, args ...any) Finding {
	return Finding{Level: OK, Message: fmt.Sprintf(msg, args...)}
}

func skip(msg string, args ...any) Finding {
	return Finding{Level: Skip, Message: fmt.Sprintf(msg, args...)}
}

// checkDaemon reports whether the daemon's status could be read: most
// checks compare the kernel with it.
func checkDaemon(_ context.Context, e *Env) []Finding {
	if e.Status == nil {
		return []Finding{{Level: Warn, Message: fmt.Sprintf("cannot read the local flanneld's status: %v", e.StatusErr),
			Fix: "start flanneld (weft's), or point --socket at its status socket; checks that need it are skipped"}}
	}
	st := e.Status
	if st.Lease.Subnet == "" && st.Lease.IPv6Subnet == "" {
		return []Finding{{Level: Warn, Message: "flanneld holds no lease yet", Fix: "see weft status and flanneld's log"}}
	}
	return []Finding{ok("flanneld %s, lease %s", st.Backend, strings.Trim(st.Lease.Subnet+" "+st.Lease.IPv6Subnet, " "))}
}
