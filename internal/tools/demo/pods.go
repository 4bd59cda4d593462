package demo

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/weft-net/weft/internal/tools/lab"
	"github.com/weft-net/weft/internal/tools/podrt"
)

func (r *run) pods() lab.Pods {
	return lab.Pods{Runtime: podrt.Client{Self: r.o.Self, Args: []string{"pod-runtime"}}, BinDir: r.o.BinDir}
}

func (r *run) addPods(ctx context.Context) error {
	pods := r.pods()
	var mu sync.Mutex
	errs := make([]error, len(r.c.Hosts))
	var wg sync.WaitGroup
	for i, h := range r.c.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := 1; p <= r.o.Pods; p++ {
				pod, err := r.addPod(ctx, pods, h, p)
				if err != nil {
					errs[i] = err
					return
				}
				mu.Lock()
				r.res.PodList = append(r.res.PodList, pod)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sortPods(r.res.PodList)
	return errors.Join(errs...)
}

func (r *run) addPod(ctx context.Context, pods lab.Pods, h *lab.Host, p int) (Pod, error) {
	name := fmt.Sprintf("%s-p%d", strings.TrimPrefix(h.NS, r.o.Name+"-"), p)
	lp, err := pods.Add(ctx, h, fmt.Sprintf("%s-%s", r.o.Name, name))
	if err != nil {
		return Pod{}, err
	}
	pod := Pod{Name: name, Host: h.NS, pod: lp, ns: lp.NS}
	if lp.IPv4.IsValid() {
		pod.IPv4 = lp.IPv4.String()
	}
	if lp.IPv6.IsValid() {
		pod.IPv6 = lp.IPv6.String()
	}
	return pod, nil
}

// delPods detaches every pod through CNI DEL, as a runtime does when a
// pod stops (releasing its address), and removes its namespace.
func (r *run) delPods() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, p := range r.res.PodList {
		_ = r.pods().Del(ctx, p.pod)
	}
}

func (r *run) checkPods(ctx context.Context) error {
	for _, p := range r.res.PodList {
		if err := r.pods().Check(ctx, p.pod); err != nil {
			return err
		}
	}
	return nil
}
