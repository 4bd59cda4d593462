package cniplugin

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weft-net/weft/internal/subnetenv"
)

// readSubnetEnv reads subnet.env for ADD (and for DEL without a saved
// configuration). A missing file becomes a "try again later" CNI error
// that tells the operator what is wrong: upstream's bare "open
// /run/flannel/subnet.env: no such file or directory" is the plugin's most
// reported confusion, and the cause is nearly always flanneld not (yet)
// running on the node, not the plugin.
func readSubnetEnv(path string) (subnetenv.Env, error) {
	return readSubnetEnvCode(path, types.ErrTryAgainLater)
}

// readSubnetEnvCode is readSubnetEnv with the CNI error code to use for a
// missing file: STATUS reports "plugin not available" rather than "try
// again later".
func readSubnetEnvCode(path string, missingCode uint) (subnetenv.Env, error) {
	env, err := subnetenv.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return subnetenv.Env{}, notReadyError(path, missingCode)
	}
	if err != nil {
		return subnetenv.Env{}, fmt.Errorf("read flannel subnet file: %w", err)
	}
	if err := validateSubnetEnv(env); err != nil {
		return subnetenv.Env{}, fmt.Errorf("flannel subnet file %s: %w", path, err)
	}
	return env, nil
}

func notReadyError(path string, code uint) *types.Error {
	return types.NewError(code,
		fmt.Sprintf("flanneld is not ready on this node: subnet file %s does not exist", path),
		"flanneld writes it once it has leased this node's subnet; check that flanneld "+
			"(the kube-flannel pod on this node) is running and read its log, and that its "+
			`--subnet-file matches "subnetFile" in the CNI configuration`)
}

// validateSubnetEnv checks the file names something to allocate from and
// the cluster network to route to, for each family it mentions.
func validateSubnetEnv(env subnetenv.Env) error {
	if !env.Subnet.IsValid() && !env.IPv6Subnet.IsValid() {
		return errors.New("neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET is set")
	}
	if env.Subnet.IsValid() != (len(env.Networks) > 0) {
		return errors.New("FLANNEL_NETWORK and FLANNEL_SUBNET must be set together")
	}
	if env.IPv6Subnet.IsValid() != (len(env.IPv6Networks) > 0) {
		return errors.New("FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET must be set together")
	}
	return nil
}
