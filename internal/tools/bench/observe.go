package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/ctxsleep"
	"github.com/weft-net/weft/internal/subnetenv"
)

// waitCounts polls the backend's per-peer objects until they are those of
// n peers, showing progress, and returns the last counts.
func (x *runner) waitCounts(ctx context.Context, phase string, n int) (Counts, error) {
	deadline := time.Now().Add(phaseTimeout)
	t := time.NewTicker(x.obs.pollEvery())
	defer t.Stop()
	for {
		c, err := x.obs.count()
		if err != nil {
			return c, fmt.Errorf("%s: %w", phase, err)
		}
		if x.obs.complete(c, n) {
			return c, nil
		}
		if exited, err := x.h.Exited(); exited {
			return c, fmt.Errorf("%s: daemon exited: %v (log: %s)", phase, err, x.h.LogFile)
		}
		if time.Now().After(deadline) {
			return c, fmt.Errorf("%s: not reached after %s: %s (want those of %d peers)",
				phase, phaseTimeout, x.obs.describe(c), n)
		}
		x.progress(phase + ": " + x.obs.describe(c))
		select {
		case <-ctx.Done():
			return c, ctx.Err()
		case <-t.C:
		}
	}
}

// waitDevice waits for the daemon to create its device.
func (x *runner) waitDevice(ctx context.Context) error {
	dev := x.obs.device()
	deadline := time.Now().Add(phaseTimeout)
	for {
		ifi, err := x.probe.LinkIndex(dev)
		if err != nil {
			return err
		}
		if ifi != 0 {
			return nil
		}
		if exited, err := x.h.Exited(); exited {
			return fmt.Errorf("daemon exited before creating %s: %v (log: %s)", dev, err, x.h.LogFile)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s after %s", dev, phaseTimeout)
		}
		if err := ctxsleep.For(ctx, x.obs.pollEvery()); err != nil {
			return err
		}
	}
}

// waitSubnetEnv waits for subnet.env and returns the leased subnet.
func (x *runner) waitSubnetEnv(ctx context.Context) (netip.Prefix, error) {
	deadline := time.Now().Add(phaseTimeout)
	for {
		if e, err := subnetenv.Read(x.h.SubnetFile); err == nil && e.Subnet.IsValid() {
			return subnetenv.LeasedSubnet(e.Subnet), nil
		}
		if exited, err := x.h.Exited(); exited {
			return netip.Prefix{}, fmt.Errorf("daemon exited before writing %s: %v (log: %s)", x.h.SubnetFile, err, x.h.LogFile)
		}
		if time.Now().After(deadline) {
			return netip.Prefix{}, fmt.Errorf("no %s after %s", x.h.SubnetFile, phaseTimeout)
		}
		if err := ctxsleep.For(ctx, 10*time.Millisecond); err != nil {
			return netip.Prefix{}, err
		}
	}
}

// progress rewrites the progress line, at most every 200 ms.
func (x *runner) progress(what string) {
	if x.o.Progress == nil || time.Since(x.last) < 200*time.Millisecond && !strings.HasPrefix(what, "done") {
		return
	}
	x.last = time.Now()
	fmt.Fprintf(x.o.Progress, "\r\033[K%s: %s", x.label, what)
}

// findPid finds the daemon by its --subnet-file flag, which is unique to
// the lab. `ip netns exec` execs the daemon in place, so the process the
// lab started is the daemon itself; searching by argument keeps this true
// for any launcher.
func findPid(ctx context.Context, subnetFile string) (int, error) {
	arg := []byte("--subnet-file=" + subnetFile + "\x00")
	deadline := time.Now().Add(10 * time.Second)
	for {
		ents, err := os.ReadDir("/proc")
		if err != nil {
			return 0, fmt.Errorf("find daemon: %w", err)
		}
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if err != nil || !bytes.Contains(b, arg) {
				continue
			}
			if argv0, _, _ := bytes.Cut(b, []byte{0}); filepath.Base(string(argv0)) == "ip" {
				continue // not yet exec'd
			}
			return pid, nil
		}
		if time.Now().After(deadline) {
			return 0, errors.New("find daemon: no process with " + strings.TrimSuffix(string(arg), "\x00"))
		}
		if err := ctxsleep.For(ctx, 20*time.Millisecond); err != nil {
			return 0, err
		}
	}
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; it is 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// procStats returns a process's peak resident set (VmHWM, KiB) and its
// CPU time so far (user + system, seconds). Zeros if it is gone.
func procStats(pid int) (hwmKiB int64, cpu float64) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				hwmKiB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// Fields after the command name, which is in parentheses and may
		// contain spaces: state is field 3, utime 14, stime 15.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 {
			f := strings.Fields(string(b[i+1:]))
			if len(f) > 12 {
				ut, _ := strconv.ParseInt(f[11], 10, 64)
				st, _ := strconv.ParseInt(f[12], 10, 64)
				cpu = float64(ut+st) / clockTicks
			}
		}
	}
	return hwmKiB, cpu
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func secs(d time.Duration) float64 { return d.Seconds() }

// sanitize makes a daemon name usable in a directory name.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' {
			return '_'
		}
		return r
	}, s)
}

func cpus() int { return runtime.NumCPU() }
