package cniplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weft-net/weft/internal/subnetenv"
)

// SupportedVersions are the CNI spec versions the plugin speaks: all
// those containernetworking/cni implements, 0.1.0 to 1.1.0, which is what
// upstream's plugin declares (it passes version.All to skel), so any
// configuration upstream's plugin accepts, including one without a
// cniVersion (0.1.0 to skel), is accepted here. The reference delegates
// declare the same list, and the library converts results between all of
// them.
func SupportedVersions() version.PluginInfo {
	return version.PluginSupports("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
}

// Plugin runs the plugin's commands. The zero value runs the real delegate
// executables found through CNI_PATH, writes results to stdout and
// diagnostics to stderr.
type Plugin struct {
	// Exec finds and runs delegate plugins; nil means the real ones.
	Exec invoke.Exec
	// Stdout receives ADD's result; nil means os.Stdout.
	Stdout io.Writer
	// Log receives warnings about clean-ups that could not be done; the
	// runtime usually keeps a plugin's stderr in its log. nil means text
	// on stderr.
	Log *slog.Logger
}

// Funcs returns the commands in the form skel.PluginMainFuncs takes.
func (p Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status}
}

// Add builds the delegate configuration from subnet.env, saves it, runs
// the delegate's ADD and prints its result in the requested version.
func (p Plugin) Add(args *skel.CmdArgs) error {
	n, err := parseArgs(args)
	if err != nil {
		return err
	}
	env, err := readSubnetEnv(n.SubnetFile)
	if err != nil {
		return err
	}
	conf, err := BuildDelegate(n, env)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	data, err := json.Marshal(conf)
	if err != nil {
		return fmt.Errorf("encode delegate config: %w", err)
	}
	// Saved before the delegate runs: if this process dies half-way, the
	// runtime's DEL still finds what to release.
	if err := saveConfig(n.DataDir, args.ContainerID, data); err != nil {
		return err
	}
	ctx := context.Background() // the runtime bounds a plugin call by killing it
	typ := n.delegateType()
	result, err := invoke.DelegateAdd(ctx, typ, data, p.Exec)
	if err != nil {
		return p.abortAdd(ctx, n.DataDir, args.ContainerID, typ, data, delegateError(typ, "ADD", err))
	}
	out, err := result.GetAsVersion(n.CNIVersion)
	if err != nil {
		return fmt.Errorf("convert %s result to CNI %s: %w", typ, n.CNIVersion, err)
	}
	return out.PrintTo(p.stdout())
}

// abortAdd releases what a failed delegate ADD may have taken (host-local
// may have allocated an address before the bridge failed) and returns
// addErr. The saved configuration is removed only once the delegate's DEL
// succeeded; otherwise it stays for the runtime's DEL to retry with.
func (p Plugin) abortAdd(ctx context.Context, dataDir, containerID, typ string, data []byte, addErr error) error {
	if err := invoke.DelegateDel(ctx, typ, data, p.Exec); err != nil {
		p.log().Warn("release after failed add", "container", containerID, "delegate", typ, "err", err)
		return addErr
	}
	if err := removeConfig(dataDir, containerID); err != nil {
		p.log().Warn("remove saved config after failed add", "container", containerID, "err", err)
	}
	return addErr
}

// Del runs the delegate's DEL with the configuration saved by ADD, or, if
// there is none, one rebuilt from subnet.env; with neither there is
// nothing this plugin could have set up, and DEL succeeds.
func (p Plugin) Del(args *skel.CmdArgs) error {
	n, err := parseArgs(args)
	if err != nil {
		return err
	}
	conf, err := p.delegateForDel(n, args.ContainerID)
	if err != nil || conf == nil {
		return err
	}
	data, typ, err := replayConfig(conf, n)
	if err != nil {
		return err
	}
	if err := invoke.DelegateDel(context.Background(), typ, data, p.Exec); err != nil {
		// The saved configuration stays, so the runtime's retry replays it.
		return delegateError(typ, "DEL", err)
	}
	return removeConfig(n.DataDir, args.ContainerID)
}

// delegateForDel returns the delegate configuration DEL should replay, or
// nil when there is none to be found.
func (p Plugin) delegateForDel(n NetConf, containerID string) (map[string]any, error) {
	data, err := loadConfig(n.DataDir, containerID)
	switch {
	case err == nil:
		conf, err := decodeSaved(data)
		if err == nil {
			return conf, nil
		}
		// Not expected (saves are atomic), but a DEL that fails forever
		// wedges the pod: fall back to subnet.env, which is right unless
		// the lease changed.
		p.log().Warn("unreadable saved config, rebuilding from subnet file", "container", containerID, "err", err)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	env, err := subnetenv.Read(n.SubnetFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rebuild delegate config for DEL: %w", err)
	}
	conf, err := BuildDelegate(n, env)
	if err != nil {
		return nil, fmt.Errorf("rebuild delegate config for DEL from %s: %w", n.SubnetFile, err)
	}
	return conf, nil
}

// Check runs the delegate's CHECK with the configuration saved by ADD and
// the runtime's previous result.
func (p Plugin) Check(args *skel.CmdArgs) error {
	n, err := parseArgs(args)
	if err != nil {
		return err
	}
	if len(n.PrevResult) == 0 {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK: prevResult is missing", "")
	}
	data, err := loadConfig(n.DataDir, args.ContainerID)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("CHECK: container %s has no saved delegate config in %s: it was not added by this plugin, or already deleted: %w",
			args.ContainerID, n.DataDir, err)
	}
	if err != nil {
		return err
	}
	conf, err := decodeSaved(data)
	if err != nil {
		return err
	}
	data, typ, err := replayConfig(conf, n)
	if err != nil {
		return err
	}
	if err := invoke.DelegateCheck(context.Background(), typ, data, p.Exec); err != nil {
		return delegateError(typ, "CHECK", err)
	}
	return nil
}

// Status reports whether ADD could succeed now: whether flanneld has
// written a usable subnet.env.
func (p Plugin) Status(args *skel.CmdArgs) error {
	n, err := parseArgs(args)
	if err != nil {
		return err
	}
	_, err = readSubnetEnvCode(n.SubnetFile, types.ErrPluginNotAvailable)
	return err
}

func parseArgs(args *skel.CmdArgs) (NetConf, error) {
	n, err := ParseNetConf(args.StdinData)
	if err != nil {
		return NetConf{}, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	return n, nil
}

// decodeSaved parses a saved delegate configuration.
func decodeSaved(data []byte) (map[string]any, error) {
	var conf map[string]any
	if err := json.Unmarshal(data, &conf); err != nil {
		return nil, fmt.Errorf("saved delegate config: %w", err)
	}
	if t, ok := conf["type"].(string); !ok || t == "" {
		return nil, errors.New(`saved delegate config: no "type"`)
	}
	return conf, nil
}

// replayConfig adapts a saved delegate configuration to the current
// request: the runtime's prevResult is in the request's spec version, so
// the delegate is told that version, and the runtime's current
// runtimeConfig replaces the saved one.
func replayConfig(conf map[string]any, n NetConf) ([]byte, string, error) {
	conf["cniVersion"] = n.CNIVersion
	delete(conf, "prevResult")
	if len(n.PrevResult) > 0 {
		conf["prevResult"] = n.PrevResult
	}
	if n.RuntimeConfig != nil {
		conf["runtimeConfig"] = n.RuntimeConfig
	}
	data, err := json.Marshal(conf)
	if err != nil {
		return nil, "", fmt.Errorf("encode delegate config: %w", err)
	}
	return data, conf["type"].(string), nil
}

// delegateError names the delegate and command in err. A *types.Error
// from the delegate is rebuilt rather than wrapped: skel prints the
// innermost *types.Error it finds, so wrapping would drop the context,
// and the delegate's error code is what the runtime should see.
func delegateError(typ, command string, err error) error {
	var e *types.Error
	if errors.As(err, &e) {
		return types.NewError(e.Code, fmt.Sprintf("delegate %s %s: %s", typ, command, e.Msg), e.Details)
	}
	return fmt.Errorf("delegate %s %s: %w", typ, command, err)
}

func (p Plugin) stdout() io.Writer {
	if p.Stdout != nil {
		return p.Stdout
	}
	return os.Stdout
}

func (p Plugin) log() *slog.Logger {
	if p.Log != nil {
		return p.Log
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}
