//! A user-service under test (test_support::user) with a client and the calls most tests
//! make.

use std::net::SocketAddr;

use shop_proto::user::v1::{self as pb, user_service_client::UserServiceClient};
use tonic::transport::Channel;

pub use test_support::user::{ADMIN_EMAIL, SECRET};
use user_service::Config;

pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub client: UserServiceClient<platform::transport::GrpcTransport>,
    pub channel: Channel,
    /// Its throw-away database (the operator's `admin` command works on it).
    pub database_url: String,
    /// Stops the server when the test drops the app.
    _server: test_support::Running,
}

pub async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let user = test_support::user::spawn_with(tweak).await;
    let channel = test_support::connect(user.grpc_addr).await;
    TestApp {
        addr: user.grpc_addr,
        metrics_addr: user.metrics_addr,
        client: UserServiceClient::new(test_support::identity::operator(
            user.grpc_addr,
            platform::identity::USER_SERVICE,
        )),
        channel,
        database_url: user.database_url,
        _server: user.server,
    }
}

impl TestApp {
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        name: &str,
    ) -> Result<pb::User, tonic::Status> {
        self.client
            .clone()
            .register(pb::RegisterRequest {
                email: email.into(),
                password: password.into(),
                display_name: name.into(),
            })
            .await
            .map(|r| r.into_inner().user.expect("user in response"))
    }

    /// The role in a fresh login's token, as ValidateToken reads it.
    pub async fn role_at_login(&self, email: &str, password: &str) -> pb::Role {
        let login = self.login(email, password).await.expect("login");
        self.role_of(&login.access_token).await
    }

    /// The role a token carries, as ValidateToken reads it.
    pub async fn role_of(&self, token: &str) -> pb::Role {
        let valid = self
            .client
            .clone()
            .validate_token(pb::ValidateTokenRequest {
                access_token: token.into(),
            })
            .await
            .expect("validate")
            .into_inner();
        pb::Role::try_from(valid.role).expect("a known role")
    }

    pub async fn login(
        &self,
        email: &str,
        password: &str,
    ) -> Result<pb::LoginResponse, tonic::Status> {
        self.client
            .clone()
            .login(pb::LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}
