package demo

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/nsrun"
	"github.com/weft-net/weft/internal/probe"
)

// pingMatrix pings every pod from every other, through the same Go
// prober the daemons use (internal/probe): one Pinger per source pod,
// opened inside its namespace, all its probes concurrent.
func (r *run) pingMatrix(ctx context.Context) {
	type job struct {
		to       Pod
		fam, dst string
	}
	pods := r.res.PodList
	perPod := make([][]Ping, len(pods))
	var wg sync.WaitGroup
	for i, a := range pods {
		var jobs []job
		for _, b := range pods {
			if a.Name == b.Name {
				continue
			}
			if b.IPv4 != "" {
				jobs = append(jobs, job{b, "ipv4", b.IPv4})
			}
			if b.IPv6 != "" {
				jobs = append(jobs, job{b, "ipv6", b.IPv6})
			}
		}
		out := make([]Ping, len(jobs))
		perPod[i] = out
		pinger, err := openPinger(a.ns)
		for k, j := range jobs {
			out[k] = Ping{From: a.Name, To: j.to.Name, Family: j.fam}
			if err != nil {
				out[k].Error = err.Error()
			}
		}
		if err != nil {
			continue
		}
		wg.Go(func() {
			defer pinger.Close()
			var jw sync.WaitGroup
			for k, j := range jobs {
				jw.Go(func() { ping(ctx, pinger, &out[k], j.dst) })
			}
			jw.Wait()
		})
	}
	wg.Wait()
	r.res.Pings = nil
	for _, out := range perPod {
		r.res.Pings = append(r.res.Pings, out...)
	}
	for _, p := range r.res.Pings {
		if !p.OK {
			r.res.Failed++
		}
	}
}

// openPinger opens a probe.Pinger inside the pod's namespace.
func openPinger(ns string) (*probe.Pinger, error) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", ns, err)
	}
	defer h.Close()
	var p *probe.Pinger
	err = nsrun.Do(h, func() (err error) { p, err = probe.Open(); return err })
	return p, err
}

func ping(ctx context.Context, pinger *probe.Pinger, p *Ping, dst string) {
	addr, err := netip.ParseAddr(dst)
	if err != nil {
		p.Error = err.Error()
		return
	}
	// A few tries: the first packet to a new neighbour can race its setup.
	for range 3 {
		rtt, err := pinger.Ping(ctx, addr, probe.Options{Timeout: 2 * time.Second})
		if err == nil {
			p.OK, p.RTTms, p.Error = true, float64(rtt.Microseconds())/1000, ""
			return
		}
		p.Error = err.Error()
		if ctx.Err() != nil {
			return
		}
	}
}
