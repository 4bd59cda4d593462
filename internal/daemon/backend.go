package daemon

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/backends"
	"github.com/weft-net/weft/internal/config"
)

// makeBackend builds the backend the network config names.
func (d *daemon) makeBackend(u backend.Underlay) error {
	all := backends.All()
	entry, ok := all[d.net.Backend.Type]
	if why, refused := backends.Refused()[d.net.Backend.Type]; !ok && refused {
		return wrapNetConfig(&config.FieldError{Field: "Backend.Type", Reason: fmt.Sprintf("%q is not supported by weft: %s",
			d.net.Backend.Type, why)})
	}
	if !ok {
		return wrapNetConfig(&config.FieldError{Field: "Backend.Type", Reason: fmt.Sprintf("%q is not supported (supported: %s)",
			d.net.Backend.Type, strings.Join(slices.Sorted(maps.Keys(all)), ", "))})
	}
	env := backend.Env{Log: d.log, Network: d.net, Underlay: u, Options: d.opts, Kernel: d.cfg.Dataplane,
		KernelRelease: d.cfg.KernelRelease}
	if d.cfg.Metrics != nil {
		env.CommandRan = d.cfg.Metrics.CommandRan
	}
	b, err := entry.New(env)
	if err != nil {
		if fe := (*config.FieldError)(nil); errors.As(err, &fe) {
			return wrapNetConfig(err)
		}
		return err
	}
	d.backend = b
	return nil
}

// findErr returns the first error in err's tree (errors.Join included)
// that is target, or nil.
func findErr(err, target error) error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if f := findErr(e, target); f != nil {
				return f
			}
		}
		return nil
	}
	if errors.Is(err, target) {
		return err
	}
	return nil
}

func ipIf[T any](ok bool, v T) T {
	if ok {
		return v
	}
	var zero T
	return zero
}
