package kubeopts

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"flightctl.dr/internal/estate"
)

func TestInstallKeepsTheSecretsCredentialsUnlessAPasswordIsGiven(t *testing.T) {
	c := Connection{Namespace: "fc", InternalNamespace: "fc-internal", HelmRelease: "r", ExecProtocol: "spdy", ValidateCerts: true}

	k := c.Install(Database{Access: "container", Host: "127.0.0.1", Port: 5432, Name: "flightctl", User: "flightctl_app"})
	assert.Equal(t, estate.KubernetesConfig{
		Connection: c.KubeConfig(), Namespace: "fc", InternalNamespace: "fc-internal", HelmRelease: "r",
		DBAccess: estate.DBAccessContainer, DBHost: "127.0.0.1", DBPort: 5432, DBName: "flightctl", ExecProtocol: "spdy",
	}, k, "without db_password the user and password come from the Secret flightctl-db-app-secret")

	k = c.Install(Database{Access: "direct", Name: "flightctl", User: "someone", Password: "pw"})
	assert.Equal(t, "someone", k.DBUser)
	assert.Equal(t, "pw", k.DBPassword)
	assert.Equal(t, estate.DBAccessDirect, k.DBAccess)
	assert.Empty(t, k.DBHost, "an empty host stays empty: the Service of the internal namespace")
}
