package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/weft-net/weft/internal/ctxsleep"
)

// singles measures one Put (then one Delete) at a time — in Kubernetes
// mode, one node annotated (then deleted) — : the time from just before
// the request to the moment the observer sees that peer's
// object appear (go): vxlan, the route notification's arrival; wireguard,
// the end of the first poll that shows the change (an upper bound).
// With polling (wireguard), lowJoin and lowLeave are the lower bounds:
// from the write to the start of the last poll that did not show the
// change.
func (x *runner) singles(ctx context.Context, ps []peer) (join, leave, lowJoin, lowLeave, acks []float64, err error) {
	w, err := x.obs.watch(ctx)
	if err != nil {
		return nil, nil, nil, nil, nil, err
	}
	defer func() {
		if werr := w.stop(); werr != nil && err == nil {
			err = werr
		}
	}()
	one := func(i int, p peer, added bool) (hi, lo float64, err error) {
		wait := w.expect(p, added)
		t0 := time.Now()
		err = x.writeOne(ctx, i, p, added)
		if err != nil {
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			_, _ = wait(cctx)
			return 0, 0, fmt.Errorf("write %s: %w", p.dst, err)
		}
		if added {
			acks = append(acks, ms(time.Since(t0)))
		}
		s, err := wait(ctx)
		if err != nil {
			return 0, 0, err
		}
		if s.After.Before(t0) {
			s.After = t0
		}
		return ms(s.At.Sub(t0)), ms(s.After.Sub(t0)), nil
	}
	for i, added := range []bool{true, false} {
		for j, p := range ps {
			x.progress(fmt.Sprintf("single %s %d/%d", []string{"join", "leave"}[i], j+1, len(ps)))
			hi, lo, err := one(x.k+j, p, added)
			if err != nil {
				return join, leave, lowJoin, lowLeave, acks, err
			}
			if added {
				join, lowJoin = append(join, hi), append(lowJoin, lo)
			} else {
				leave, lowLeave = append(leave, hi), append(lowLeave, lo)
			}
			if err := ctxsleep.For(ctx, sampleGap); err != nil {
				return join, leave, lowJoin, lowLeave, acks, err
			}
		}
	}
	return join, leave, lowJoin, lowLeave, acks, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
