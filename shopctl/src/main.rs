//! shopctl: the operator's tool for service identities.
//!
//!   shopctl keys init DIR                       a private key per identity + DIR/trusted-keys
//!   shopctl certs init --out DIR                a private CA + a TLS certificate per gRPC
//!                                               server (internal gRPC over TLS)
//!   shopctl token --aud item-service --keys DIR  a token (as the operator) for grpcurl:
//!     grpcurl -plaintext -H "x-shop-caller: $(shopctl token --aud item-service --keys DIR)" \
//!       127.0.0.1:50052 list

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use platform::{
    certs::{self, CertDir},
    identity::{self, MAX_LIFETIME, UserAssertion, UserRole},
    keys::KeyDir,
    policy::ANY_SERVER,
};
use uuid::Uuid;

/// The audiences a token can name: each service's own, the card gateway's admin API, and
/// "shop" (the admin services every server hosts: FaultAdmin, Echo).
const AUDIENCES: [&str; 5] = [
    identity::USER_SERVICE,
    identity::ITEM_SERVICE,
    identity::PAYMENT_SERVICE,
    "card-gateway",
    ANY_SERVER,
];

#[derive(Parser)]
#[command(
    name = "shopctl",
    about = "Service identity keys, tokens and internal TLS certificates for the Shop"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Key directories.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Internal TLS certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Prints a service token (put it in the `x-shop-caller` header or metadata).
    Token {
        /// The identity that signs (its key is DIR/NAME.pem).
        #[arg(long = "as", default_value = identity::OPERATOR)]
        name: String,
        /// The service the token is for: user-service, item-service, payment-service,
        /// card-gateway (its /admin/* API) or shop (FaultAdmin and Echo on any server).
        #[arg(long)]
        aud: String,
        /// The key directory `shopctl keys init` made.
        #[arg(long, env = "SHOP_KEYS_DIR")]
        keys: PathBuf,
        /// How long the token lives (at most 3600 s, what servers accept).
        #[arg(long, default_value_t = MAX_LIFETIME.as_secs())]
        ttl_secs: u64,
        /// Acting for this end user (the `act` claim), e.g. to try a user-scoped RPC.
        #[arg(long)]
        user: Option<Uuid>,
        /// The end user is an admin (with --user).
        #[arg(long, requires = "user")]
        admin: bool,
        /// The one gRPC method (path, "/shop.item.v1.ItemService/GetItem") the token opens.
        /// Servers accept a token naming no method only from the operator (a grpcurl
        /// session); any other identity's token needs one.
        #[arg(long)]
        method: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Makes DIR/NAME.pem for every identity that has none (gateway, user-service,
    /// item-service, payment-service, operator) and writes DIR/trusted-keys from them.
    /// Existing keys are kept, so running it again is harmless.
    Init { dir: PathBuf },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Makes DIR/ca.pem (a private CA) and, for user-service, item-service and
    /// payment-service, DIR/NAME.crt with DIR/NAME.key (readable by you only), for the
    /// names each is called by in compose and Kubernetes and on this machine. The CA's key
    /// is not kept. A complete set already there is kept.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// The Kubernetes namespace the services run in (their NAME.NAMESPACE.svc names).
        #[arg(long, default_value = certs::DEFAULT_NAMESPACE)]
        namespace: String,
        /// How long the certificates are valid, in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3650))]
        days: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shopctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keys {
            command: KeysCommand::Init { dir },
        } => {
            let keys = KeyDir::new(&dir);
            let made = keys.init(&identity::IDENTITIES)?;
            for name in identity::IDENTITIES {
                let state = if made.iter().any(|m| m == name) {
                    "made"
                } else {
                    "kept"
                };
                eprintln!("{state:>5} {}", keys.key_file(name).display());
            }
            eprintln!("wrote {}", keys.trust_file().display());
            eprintln!(
                "each process: SHOP_IDENTITY_KEY_FILE=<its NAME.pem> SHOP_TRUSTED_KEYS_FILE={}",
                keys.trust_file().display()
            );
            use platform::card_keys::Kind;
            eprintln!(
                "card processor: CARD_GATEWAY_SECRET_KEY_FILE={} (card-gateway, payment-service), \
                 CARD_GATEWAY_PUBLISHABLE_KEY_FILE={} (card-gateway, gateway)",
                keys.card_key_file(Kind::Secret).display(),
                keys.card_key_file(Kind::Publishable).display()
            );
            Ok(())
        }
        Command::Certs {
            command:
                CertsCommand::Init {
                    out,
                    namespace,
                    days,
                },
        } => {
            let dir = CertDir::new(&out);
            let validity = Duration::from_secs(days * 24 * 3600);
            let state = match dir.init(&certs::SERVERS, &namespace, validity)? {
                certs::Init::Made => "made",
                certs::Init::Kept => "kept",
            };
            eprintln!("{state:>5} {}", dir.ca_file().display());
            for server in certs::SERVERS {
                eprintln!(
                    "{state:>5} {} {}",
                    dir.cert_file(server).display(),
                    dir.key_file(server).display()
                );
            }
            eprintln!(
                "each server: <PREFIX>_TLS_CERT=<its NAME.crt> <PREFIX>_TLS_KEY=<its NAME.key> \
                 (USER_, ITEM_, PAYMENT_); each caller: SHOP_TLS_CA={} and https:// service URLs",
                dir.ca_file().display()
            );
            Ok(())
        }
        Command::Token {
            name,
            aud,
            keys,
            ttl_secs,
            user,
            admin,
            method,
        } => {
            if !AUDIENCES.contains(&aud.as_str()) {
                anyhow::bail!("--aud {aud:?}: expected one of {}", AUDIENCES.join(", "));
            }
            let signer = KeyDir::new(keys).signer(&name)?;
            let user = user.map(|user_id| UserAssertion {
                user_id,
                role: if admin {
                    UserRole::Admin
                } else {
                    UserRole::Customer
                },
            });
            let ttl = Duration::from_secs(ttl_secs).min(MAX_LIFETIME);
            println!("{}", signer.mint_for(&aud, method.as_deref(), user, ttl)?);
            Ok(())
        }
    }
}
