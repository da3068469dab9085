// The spec's StreamingAPI class, copied verbatim from shared/spec/streaming-api.md
// ("JavaScript/TypeScript клиент"). Do not edit: it is what frontend teams run.

class StreamingAPI {
  constructor(baseURL, authToken) {
    this.baseURL = baseURL;
    this.authToken = authToken;
  }

  // Авторизация
  async login(email, password) {
    const response = await fetch(`${this.baseURL}:8082/auth/login`, {
      method: 'POST',
      headers: {
        'Content-Type': 'application/json'
      },
      body: JSON.stringify({ email, password })
    });

    const data = await response.json();
    
    if (response.ok) {
      this.authToken = data.access_token;
      return data;
    }
    
    throw new Error(data.message);
  }

  // Создание стрима
  async createStream(name, title, description) {
    const response = await fetch(`${this.baseURL}:8080/api/streams`, {
      method: 'POST',
      headers: {
        'Authorization': `Bearer ${this.authToken}`,
        'Content-Type': 'application/json'
      },
      body: JSON.stringify({ name, title, description })
    });

    return await response.json();
  }

  // Запуск стрима
  async startStream(streamId) {
    const response = await fetch(`${this.baseURL}:8080/api/streams/${streamId}/start`, {
      method: 'POST',
      headers: {
        'Authorization': `Bearer ${this.authToken}`
      }
    });

    return await response.json();
  }

  // Получение списка VOD
  async getRecordings(userId = null, limit = 50, offset = 0) {
    const params = new URLSearchParams({
      limit: limit.toString(),
      offset: offset.toString()
    });
    
    if (userId) params.append('user_id', userId.toString());

    const response = await fetch(`${this.baseURL}:8081/api/v1/recordings?${params}`, {
      headers: {
        'Authorization': `Bearer ${this.authToken}`
      }
    });

    return await response.json();
  }
}

export { StreamingAPI };
