// A real OpenID Connect provider (panva/oidc-provider) for kakuin's console tests, shaped
// like gBizID: code flow with PKCE S256, discovery, JWKS, userinfo with corporate_number and
// account_type. Listens on 127.0.0.1 (port 0) and prints {"issuer": ...} once ready.
// Input (JSON in $OIDC_TEST_CONFIG): {"clients": [...], "accounts": {"<login>": {claims}}}.
import http from 'node:http';
import Provider from 'oidc-provider';

const input = JSON.parse(process.env.OIDC_TEST_CONFIG);
const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: input.clients,
    claims: { openid: ['sub'], profile: ['name', 'account_type', 'corporate_number'] },
    cookies: { keys: ['kakuin-test-only'] },
    pkce: { methods: ['S256'], required: () => true },
    features: { devInteractions: { enabled: true } },
    async findAccount(ctx, id) {
      const account = input.accounts[id];
      if (!account) return undefined;
      return { accountId: id, async claims() { return { sub: account.sub || id, ...account }; } };
    },
  });
  // devInteractions log every login name in as an account id; unknown names fail findAccount.
  server.on('request', provider.callback());
  process.stdout.write(JSON.stringify({ issuer }) + '\n');
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
